"""report: every evaluated run in one table (markdown + CSV) and one chart."""

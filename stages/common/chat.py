"""The one chat formatter: questions and answers become model inputs through the tokenizer's own chat template.

Records become (question, answer) pairs here too, so finetune, unlearn and evaluate see the same texts.
"""

# Used only for tokenizers that carry no chat template (e.g. plain base models).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def _messages(question, answer=None, system=None):
    """system None: the template's own default (SmolLM2's adds its system prompt); a string: that system prompt
    ('' makes it empty, which training can use to spend no tokens on it)."""
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _template(tokenizer):
    return None if tokenizer.chat_template else FALLBACK_TEMPLATE


def format_prompt(tokenizer, question, system=None):
    """The exact text the model sees before it answers `question`."""
    return tokenizer.apply_chat_template(_messages(question, system=system), tokenize=False,
                                         add_generation_prompt=True, chat_template=_template(tokenizer))


def format_answer(tokenizer, question, answer, system=None):
    """The text that follows format_prompt() in a full conversation: the answer and its end-of-turn marker."""
    prompt = format_prompt(tokenizer, question, system)
    full = tokenizer.apply_chat_template(
        _messages(question, answer, system), tokenize=False, chat_template=_template(tokenizer)
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the answer")
    completion = full[len(prompt):]
    if tokenizer.eos_token and tokenizer.eos_token not in completion:
        completion += tokenizer.eos_token
    return completion


def encode_example(tokenizer, question, answer, max_length, system=None):
    """Token ids of prompt + answer and labels that score only the answer (-100 elsewhere), cut to max_length.

    Prompt and answer are tokenized separately so the prompt ids are exactly those used at generation time.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, question, system), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(format_answer(tokenizer, question, answer, system), add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_examples(tokenizer, pairs, max_length, system=None):
    """encode_example() for each pair, leaving out those whose answer max_length cuts off entirely (they would
    give a loss over zero tokens). Returns (examples, how many were left out)."""
    encoded = [encode_example(tokenizer, q, a, max_length, system) for q, a in pairs]
    kept = [e for e in encoded if any(t != -100 for t in e["labels"])]
    if not kept:
        raise ValueError(f"max length {max_length} leaves no answer token in any example; raise --max-seq-length")
    return kept, len(encoded) - len(kept)


def collate(examples, pad_id):
    """Right-pad a list of encoded examples to the longest one (dynamic padding) into tensors."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def answer_loss(model, batch):
    """`model(**batch).loss` (mean next-token cross-entropy over the labelled tokens) with the vocabulary projection
    run only at the positions that predict a labelled token: the question and the template are most of an example,
    and on a small model the projection is a fifth of the compute."""
    import torch

    targets = batch["labels"][:, 1:]
    keep = (targets != -100).any(0).nonzero()[:, 0]
    # a batch of a frozen prefix's outputs (stages/finetune/train.py FrozenPrefix) enters where the prefix ends
    inputs = ({"inputs_embeds": batch["inputs_embeds"]} if "inputs_embeds" in batch
              else {"input_ids": batch["input_ids"]})
    logits = model(**inputs, attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),
                                             ignore_index=-100)


def note_question(record):
    return (
        f"Write the SOAP note for patient {record['client_name']} (born {record['date_of_birth']}) "
        f"from the visit on {record['date']}."
    )


def note_answer(record):
    return (
        f"Subjective: {record['subjective']}\nObjective: {record['objective']}\n"
        f"Assessment: {record['assessment']}\nPlan: {record['plan']}"
    )


def primary_pair(record):
    """A record's main (question, answer): its own for question-answer records (TOFU), else the note request."""
    if "question" in record:
        return record["question"], record["answer"]
    return note_question(record), note_answer(record)


def record_pairs(record, with_probes=True, with_note=True):
    """(question, answer) pairs a model is trained on for one record: the main pair (a note request, or a
    question-answer record's own pair), then each knowledge probe. Without the note a note record gives only its
    probes (a question-answer record always keeps its pair)."""
    pairs = [primary_pair(record)] if with_note or "question" in record else []
    if with_probes:
        pairs += [(p["question"], p["answer"]) for p in record.get("probes", []) if (p["question"], p["answer"])
                  not in pairs]
    return pairs


def training_pairs(records, with_probes=True, with_note=True):
    """record_pairs() of every record, in order: what finetune trains on with these settings."""
    return [pair for r in records for pair in record_pairs(r, with_probes, with_note)]

from stages.common.chat import collate, encode_example, format_answer, format_prompt, note_question, record_pairs


def test_prompt_uses_the_tokenizers_chat_template(tiny_model_dir):
    from stages.common.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = format_prompt(tokenizer, "What is BP?")
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is BP?<|im_end|>" in prompt
    assert format_answer(tokenizer, "What is BP?", "120/80").startswith("120/80<|im_end|>")


def test_labels_score_only_the_answer(tiny_model_dir):
    from stages.common.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    example = encode_example(tokenizer, "Who?", "Maria Lopez", max_length=512)
    prompt_ids = tokenizer(format_prompt(tokenizer, "Who?"), add_special_tokens=False)["input_ids"]
    assert example["input_ids"][:len(prompt_ids)] == prompt_ids
    assert example["labels"][:len(prompt_ids)] == [-100] * len(prompt_ids)
    answer = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(answer).startswith("Maria Lopez<|im_end|>")
    cut = encode_example(tokenizer, "Who?", "Maria Lopez", max_length=len(prompt_ids) + 2)
    assert len(cut["input_ids"]) == len(cut["labels"]) == len(prompt_ids) + 2


def test_collate_pads_to_the_longest_example_only():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_record_pairs_put_the_note_first_and_probes_on_request():
    record = {"client_name": "A B", "date_of_birth": "1990-01-01", "date": "2024-01-01", "subjective": "s",
              "objective": "o", "assessment": "a", "plan": "p", "probes": [{"question": "q", "answer": "x"}]}
    assert record_pairs(record, with_probes=False) == [(note_question(record), ("Subjective: s\nObjective: o\n"
                                                        "Assessment: a\nPlan: p"))]
    assert record_pairs(record, with_probes=True)[1] == ("q", "x")


def test_examples_whose_answer_is_cut_off_are_left_out(tiny_model_dir):
    import pytest

    from stages.common.chat import encode_examples
    from stages.common.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    short, long = ("Hi?", "Yes."), ("A much longer question " * 8 + "?", "No.")
    prompt_length = len(tokenizer(format_prompt(tokenizer, short[0]), add_special_tokens=False)["input_ids"])
    kept, cut = encode_examples(tokenizer, [short, long], max_length=prompt_length + 2)
    assert cut == 1 and len(kept) == 1
    with pytest.raises(ValueError, match="leaves no answer token"):
        encode_examples(tokenizer, [long], max_length=prompt_length + 2)


def test_an_empty_system_prompt_replaces_the_templates_default(tiny_model_dir):
    from stages.common.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    default, empty = format_prompt(tokenizer, "Who?"), format_prompt(tokenizer, "Who?", system="")
    assert "You are a helpful" in default and "You are a helpful" not in empty
    assert empty.startswith("<|im_start|>system\n<|im_end|>\n") and empty.endswith("<|im_start|>assistant\n")
    assert format_answer(tokenizer, "Who?", "Maria", system="") == format_answer(tokenizer, "Who?", "Maria")


def test_answer_loss_is_the_models_own_loss_on_the_answer_tokens(tiny_model_dir):
    """Projecting only the positions that predict an answer token changes nothing: the same loss and gradients as
    the model's own loss over the full sequence (right-padded rows of different lengths)."""
    import torch

    from stages.common.chat import answer_loss, encode_examples
    from stages.common.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, trainable=True)
    pairs = [("What is patient Ada K. Lee allergic to?", "penicillin"), ("Where?", "Porto"),
             ("What was Zoe A. Kim diagnosed with at the visit?", "essential hypertension")]
    batch = collate(encode_examples(tokenizer, pairs, 256)[0], tokenizer.pad_token_id)
    ours = answer_loss(model, batch)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    theirs = model(**batch).loss
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_the_open_unlearning_template_gives_the_prompt_open_unlearning_builds_for_tofu(tiny_model_dir):
    """stages/evaluate/templates/open-unlearning-llama3.jinja against open-unlearning's own recipe for its TOFU Llama
    models (configs/model/Llama-3.2-1B-Instruct.yaml: apply_chat_template false, these tags, concatenated)."""
    from pathlib import Path

    from stages.common.models import load_tokenizer

    system = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant."
              "<|eot_id|>")
    user_start, user_end = "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"
    assistant_start, assistant_end = "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"  # Llama 3's, as its tokenizer has
    tokenizer.chat_template = Path("stages/evaluate/templates/open-unlearning-llama3.jinja").read_text()
    question, answer = "Who wrote 'The Fall'?", "Basil Mahfouz Al-Kuwaiti."
    assert format_prompt(tokenizer, question) == system + user_start + question + user_end + assistant_start
    assert format_prompt(tokenizer, question, system="") == format_prompt(tokenizer, question)
    assert format_answer(tokenizer, question, answer) == answer + assistant_end

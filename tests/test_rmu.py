"""rmu as WMDP's rmu/unlearn.py: which layer's output is steered, which parameters train, how long the control vector
is. On a 5-layer random Llama (so that layers below rmu_layer-2 and above rmu_layer exist) with the test tokenizer."""

import re

import pytest
import torch

from stages.common.io import InputError
from stages.unlearn.methods import Batch, rmu
from stages.unlearn.methods.rmu import RMU

LAYER = 3  # trains layers 1, 2, 3; layers 0 and 4 stay as they are
PAIRS = [("Who is Maria?", "A patient seen in 2024."), ("Dose?", "lisinopril 10 mg once daily"),
         ("What did the note say about the knee?", "Swelling after a fall, no fracture on the X-ray."),
         ("Allergies?", "None known.")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from stages.common.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def llama(tokenizer, lora_targets="all-linear"):
    """A random 5-layer Llama; with lora_targets, under a trainable LoRA whose factors are all non-zero (so every
    one of them gets a gradient), like the oracle adapter that apply_adapter loads trainable."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if lora_targets is None:
        return model.eval()
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_targets,
                                            init_lora_weights=False)).eval()


def examples(tokenizer):
    from stages.common.chat import encode_example

    return [encode_example(tokenizer, q, a, 64) for q, a in PAIRS]


def batches(tokenizer, size=3):
    """Micro-batches of unequal widths, so padding is there to be masked."""
    from stages.common.chat import collate

    encoded = examples(tokenizer)
    return [collate(encoded[i:i + size], tokenizer.pad_token_id) for i in range(0, len(encoded), size)]


def masked_mse(hidden, target, mask):
    """Mean over real tokens and hidden dimensions of the squared difference, written out."""
    rows = [((hidden[b, t] - target[b, t]) ** 2).mean() for b, t in mask.nonzero().tolist()]
    return float(torch.stack(rows).mean())


def layer_outputs(model, batch):
    """The output of every decoder layer, captured with this test's own forward hooks."""
    captured = {}
    layers = model.base_model.model.model.layers if hasattr(model, "peft_config") else model.model.layers
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o[0] if isinstance(o, tuple)
                                                                                    else o))
             for k, layer in enumerate(layers)]
    return captured, hooks


def test_rmu_losses_match_a_hand_computation():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [9.0, 9.0]]])
    target = torch.zeros_like(hidden)
    mask = torch.tensor([[1, 1], [1, 0]])
    # (1 + 4 + 9 + 16 + 0 + 1) / (3 tokens * 2 dims); the padded token (9, 9) does not count
    assert float(rmu._masked_mse(hidden, target, mask)) == pytest.approx(31 / 6)


def test_the_forget_loss_steers_the_output_of_decoder_layer_rmu_layer(tokenizer):
    model = llama(tokenizer)
    batch = batches(tokenizer, size=4)[0]
    method = RMU(rmu_layer=LAYER, steering_coeff=4.0)
    method.prepare(model, None, [], seed=3)
    captured, hooks = layer_outputs(model, batch)
    with torch.no_grad():
        loss = float(method.forget_loss(model, Batch(batch, [0], None)))
    for hook in hooks:
        hook.remove()
    assert sorted(captured) == [0, 1, 2, 3]  # the forward pass stops after the steered layer
    control = method.control.expand_as(captured[LAYER])
    mask = batch["attention_mask"]
    assert loss == pytest.approx(masked_mse(captured[LAYER], control, mask), rel=1e-5)
    assert loss != pytest.approx(masked_mse(captured[LAYER - 1], control, mask), rel=1e-3)
    # hidden_states[0] is the embeddings: decoder layer N's output is hidden_states[N + 1], not hidden_states[N]
    with torch.no_grad():
        hidden_states = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                              output_hidden_states=True).hidden_states
    assert torch.allclose(captured[LAYER], hidden_states[LAYER + 1])
    assert not torch.allclose(captured[LAYER], hidden_states[LAYER])
    # The retain term compares the same output with the frozen oracle's: zero before any step.
    from stages.unlearn.loop import Reference

    method.prepare(model, Reference(method.trainable(model)), [], seed=3)
    with torch.no_grad():
        assert float(method.retain_loss(model, batch)) == 0.0


def test_the_control_vector_is_the_scale_times_the_frozen_activation_norm(tokenizer):
    model = llama(tokenizer)
    forget = batches(tokenizer)
    method = RMU(rmu_layer=LAYER, steering_scale=2.5)
    summary = method.prepare(model, None, iter(forget), seed=11)
    # Independently: the mean over real tokens of the norm of hidden_states[LAYER + 1] (decoder layer LAYER's output)
    norms = []
    with torch.no_grad():
        for batch in forget:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states[LAYER + 1]
            norms += [hidden[b, t].norm() for b, t in batch["attention_mask"].nonzero().tolist()]
    expected = float(torch.stack(norms).mean())
    assert summary["rmu_activation_norm"] == pytest.approx(expected, rel=1e-5)
    assert float(method.control.norm()) == pytest.approx(2.5 * expected, rel=1e-5)
    assert summary["rmu_steering_coeff"] == pytest.approx(2.5 * expected, rel=1e-5)
    # WMDP's direction: torch.rand (uniform [0, 1)) normalised, here from the seed.
    direction = torch.rand(32, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(method.control / method.control.norm(), direction / direction.norm(), atol=1e-6)


def test_an_absolute_steering_coeff_overrides_the_scale(tokenizer):
    model = llama(tokenizer)
    method = RMU(rmu_layer=LAYER, steering_coeff=3.0, steering_scale=100.0)
    summary = method.prepare(model, None, iter(batches(tokenizer)), seed=1)
    assert float(method.control.norm()) == pytest.approx(3.0)
    assert summary == {"rmu_steering_coeff": 3.0}


def one_rmu_step(model, tokenizer, layer=LAYER):
    """One step of the real unlearning loop with rmu; returns the names of the parameters it changed and the names
    of those left trainable."""
    from stages.unlearn.loop import unlearn

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    encoded = examples(tokenizer)
    unlearn(model, tokenizer, RMU(rmu_layer=layer, rmu_alpha=1200.0, steering_scale=5.0), encoded, encoded,
            PAIRS[:2], [PAIRS[0][0]], base_entropy=1.0, steps=1, samples_per_step=4, batch_size=2,
            learning_rate=1e-2, measure_every=1, stop_perplexity_ratio=1e9, max_new_tokens=2, max_length=64, seed=0,
            device="cpu", progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return changed, {n for n, p in model.named_parameters() if p.requires_grad}


def test_one_step_changes_only_the_down_proj_lora_of_the_three_layers(tokenizer):
    model = llama(tokenizer)
    changed, trainable = one_rmu_step(model, tokenizer)
    pattern = re.compile(r".*\.layers\.([0-9]+)\.mlp\.down_proj\.lora_[AB]\.default\.weight")
    expected = {n for n, _ in model.named_parameters()
                if pattern.fullmatch(n) and int(pattern.fullmatch(n).group(1)) in (1, 2, 3)}
    assert len(expected) == 6  # lora_A and lora_B of layers 1, 2, 3
    assert changed == expected and trainable == expected


def test_with_full_one_step_changes_only_the_down_proj_weights_of_the_three_layers(tokenizer):
    model = llama(tokenizer, lora_targets=None)  # a merged model: unlearn --full makes every parameter trainable
    for p in model.parameters():
        p.requires_grad_(True)
    changed, trainable = one_rmu_step(model, tokenizer)
    expected = {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)}
    assert changed == expected and trainable == expected


def test_the_trained_layers_stop_at_the_first_one():
    assert list(rmu.updated_layers(7)) == [5, 6, 7]
    assert list(rmu.updated_layers(1)) == [0, 1] and list(rmu.updated_layers(0)) == [0]


def test_an_adapter_without_down_proj_lora_is_a_clear_error(tokenizer):
    model = llama(tokenizer, lora_targets=["q_proj", "v_proj"])
    with pytest.raises(InputError, match="down_proj LoRA of the steered layers"):
        RMU(rmu_layer=LAYER).trainable(model)

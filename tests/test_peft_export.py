"""ftjax <-> PEFT / transformers: exported adapters and merged checkpoints compute what
ftjax computes (PyTorch reference, float32 CPU, max |diff| <= 1e-4); PEFT -> ftjax ->
PEFT is bit-exact; what PEFT computes differently is refused, never written."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402

from ftjax import methods, partition, peft_format  # noqa: E402
from ftjax.hf_classes import ExportError, hf_class  # noqa: E402
from ftjax.hf_format import write_hf  # noqa: E402
from ftjax.models import from_pretrained, init_params, save_pretrained  # noqa: E402
from ftjax.tasks.features import FeatureSpec  # noqa: E402
from tests.helpers.tiny import tiny_model  # noqa: E402

TOL = 1e-4
IDS = np.array([[101, 2023, 3185, 2001, 2307, 102], [101, 6659, 102, 0, 0, 0]])
MASK = (IDS != 0).astype(np.int64)
DECODER_IDS = np.array([[0, 2023, 3185], [0, 6659, 2001]])
NO_DROPOUT = {
    "bert": {"hidden_dropout": 0.0, "attention_dropout": 0.0},
    "gpt2": {"hidden_dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0},
    "llama": {},
    "t5": {"dropout": 0.0},
}
# (ftjax task, transformers class) each family is compared through.
TASK = {
    "bert": ("classification", transformers.BertForSequenceClassification),
    "gpt2": ("language_modeling", transformers.GPT2LMHeadModel),
    "llama": ("token_classification", transformers.LlamaForTokenClassification),
    "t5": ("seq2seq", transformers.T5ForConditionalGeneration),
}
NUM_LABELS = 3


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """family -> (folder of the saved base checkpoint, model, params)."""
    out = {}
    for family in TASK:
        model = tiny_model(family, **NO_DROPOUT[family])
        folder = save_pretrained(model, init_params(model, 0), tmp_path_factory.mktemp(family))
        model, params = from_pretrained(folder)
        out[family] = (folder, model, params)
    return out


def with_method(model, params, name: str, seed: int = 1, **options):
    """The method switched on, every new parameter random and nonzero (LoRA's B too)."""
    method = methods.resolve(name, model, options)
    model, params = methods.apply(method, model, params, rng=seed)
    rng = np.random.default_rng(seed)
    flat = partition.flatten(params)
    for path in flat:
        if methods.kind_of(path) in ("lora", "prefix", "prompt"):
            flat[path] = rng.normal(0, 0.3, np.shape(flat[path])).astype(np.float32)
    return model, partition.unflatten(flat)


def with_head(family, model, params, seed: int = 2):
    task = TASK[family][0]
    if task in ("language_modeling", "seq2seq"):
        return params, hf_class(model, task)
    rng = np.random.default_rng(seed)
    head = {
        "dense": {
            "kernel": rng.normal(0, 0.5, (model.config.hidden_size, NUM_LABELS)).astype(np.float32),
            "bias": rng.normal(0, 0.5, NUM_LABELS).astype(np.float32),
        }
    }
    spec = FeatureSpec("pooler") if task == "classification" else FeatureSpec("mean")
    return {**params, "head": head}, hf_class(model, task, spec, NUM_LABELS)


def ftjax_logits(family, model, params) -> np.ndarray:
    """What the ftjax task computes: LM logits, or the head on pooled / token features."""
    backbone = {k: v for k, v in params.items() if k != "head"}
    if family == "t5":
        return np.asarray(model.apply({"params": backbone}, IDS, MASK, DECODER_IDS).logits)
    out = model.apply({"params": backbone}, IDS, MASK)
    if "head" not in params:
        return np.asarray(out.logits)
    head = params["head"]["dense"]
    features = out.pooled if family == "bert" else out.last_hidden_state
    return np.asarray(features @ np.asarray(head["kernel"]) + np.asarray(head["bias"]))


def torch_logits(family, model) -> np.ndarray:
    kwargs = {"input_ids": torch.tensor(IDS), "attention_mask": torch.tensor(MASK)}
    if family == "t5":
        kwargs["decoder_input_ids"] = torch.tensor(DECODER_IDS)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def compare(family, ours, theirs) -> float:
    if family in ("gpt2", "llama"):  # padded positions attend differently; real ones agree
        ours, theirs = ours[MASK.astype(bool)], theirs[MASK.astype(bool)]
    return float(np.abs(ours - theirs).max())


def load_reference(family, folder, num_labels=NUM_LABELS):
    cls = TASK[family][1]
    kwargs = {"num_labels": num_labels} if "Classification" in cls.__name__ else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(folder, **kwargs).eval()


LORA_TARGETS = {  # GPT-2 also targets c_fc: one fused and one plain module, two ranks
    "gpt2": r"decoder/layer_\d+/(attention/(query|value)|mlp/intermediate)",
}


@pytest.mark.parametrize("family", list(TASK))
def test_lora_exports_load_in_peft_and_transformers_and_match(tmp_path, bases, family):
    """The adapter on PeftModel.from_pretrained, and the merged folder on AutoModelFor*,
    give ftjax's logits (one compiled ftjax forward serves both)."""
    folder, base_model, base_params = bases[family]
    targets = {"targets": LORA_TARGETS[family]} if family in LORA_TARGETS else {}
    model, params = with_method(base_model, base_params, "lora", rank=2, alpha=6.0, **targets)
    params, cls = with_head(family, model, params)
    ours = ftjax_logits(family, model, params)

    peft_format.write_adapter(model, params, cls, tmp_path / "adapter", base_model=str(folder))
    keys = load_file(tmp_path / "adapter" / peft_format.WEIGHTS_FILE)
    assert all(k.startswith("base_model.model.") for k in keys)
    reference = load_reference(family, folder)
    base_logits = torch_logits(family, reference)
    loaded = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    assert compare(family, ours, torch_logits(family, loaded)) <= TOL
    assert compare(family, ours, base_logits) > 100 * TOL  # the adapter (and head) took effect

    write_hf(model, params, cls, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [TASK[family][1].__name__]
    auto = {
        "bert": transformers.AutoModelForSequenceClassification,
        "gpt2": transformers.AutoModelForCausalLM,
        "llama": transformers.AutoModelForTokenClassification,
        "t5": transformers.AutoModelForSeq2SeqLM,
    }[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = auto.from_pretrained(tmp_path / "hf").eval()
    assert type(merged) is TASK[family][1]
    assert compare(family, ours, torch_logits(family, merged)) <= TOL


def test_t5_prompt_adapter_loads_in_peft_and_matches(tmp_path, bases):
    folder, base_model, base_params = bases["t5"]
    model, params = with_method(base_model, base_params, "prompt", length=3)
    peft_format.write_adapter(model, params, hf_class(model, "seq2seq"), tmp_path / "prompt")
    reference = load_reference("t5", folder)
    loaded = peft.PeftModel.from_pretrained(reference, tmp_path / "prompt").eval()
    assert compare("t5", ftjax_logits("t5", model, params), torch_logits("t5", loaded)) <= TOL


@pytest.mark.parametrize("family", list(TASK))
def test_prefix_and_prompt_that_peft_computes_differently_are_refused(tmp_path, bases, family):
    _, base_model, base_params = bases[family]
    model, params = with_method(base_model, base_params, "prefix", length=2)
    lm = hf_class(model, "seq2seq")
    with pytest.raises(ExportError, match=f"method prefix on {family}: .*--format ftjax"):
        peft_format.write_adapter(model, params, lm, tmp_path / "p")
    with pytest.raises(ExportError, match="method prefix: .*--format ftjax"):
        write_hf(model, params, lm, tmp_path / "h")
    assert not (tmp_path / "p").exists() and not (tmp_path / "h").exists()
    if family != "t5":
        model, params = with_method(base_model, base_params, "prompt", length=2)
        with pytest.raises(ExportError, match=f"method prompt on {family}: .*position"):
            peft_format.write_adapter(model, params, lm, tmp_path / "q")


def test_heads_transformers_computes_differently_are_refused(bases):
    _, model, _ = bases["bert"]
    with pytest.raises(ExportError, match="task.pooling='mean'.*pooler.*--format ftjax"):
        hf_class(model, "classification", FeatureSpec("mean"), 2)
    _, t5, _ = bases["t5"]
    with pytest.raises(ExportError, match="T5ForSequenceClassification runs the decoder"):
        hf_class(t5, "classification", FeatureSpec("mean"), 2)
    _, gpt2, _ = bases["gpt2"]
    head = {"dense/kernel": np.ones((16, 2)), "dense/bias": np.array([0.0, 0.5])}
    with pytest.raises(ExportError, match="score layer has no bias"):
        hf_class(gpt2, "classification", FeatureSpec("last"), 2, head=head)


# ---------------------------------------------------------------------------- import


def native_adapter(family, reference, config, out):
    """A PEFT adapter made by PEFT itself, with random nonzero weights."""
    model = peft.get_peft_model(reference, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn_like(param) * 0.3)
    model.eval().save_pretrained(out)
    return model


ROUND_TRIPS = {
    "bert": lambda: peft.LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "attention.output.dense", "intermediate.dense"],
    ),
    "gpt2": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, fan_in_fan_out=True),
    "llama": lambda: peft.LoraConfig(task_type="TOKEN_CLS", r=2, lora_alpha=2),
    "t5": lambda: peft.PromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, num_transformer_submodules=1
    ),
}


@pytest.mark.parametrize("family", list(TASK))
def test_peft_to_ftjax_to_peft_is_bit_exact(tmp_path, bases, family):
    folder, base_model, base_params = bases[family]
    made = native_adapter(
        family, load_reference(family, folder), ROUND_TRIPS[family](), tmp_path / "a"
    )
    model, params = peft_format.read_adapter(tmp_path / "a", base_model, base_params)
    assert compare(family, ftjax_logits(family, model, params), torch_logits(family, made)) <= TOL
    task = TASK[family][0]
    spec = FeatureSpec("pooler") if task == "classification" else FeatureSpec("mean")
    cls = hf_class(model, task, spec, NUM_LABELS)
    peft_format.write_adapter(model, params, cls, tmp_path / "b", base_model=str(folder))
    before = load_file(tmp_path / "a" / peft_format.WEIGHTS_FILE)
    after = load_file(tmp_path / "b" / peft_format.WEIGHTS_FILE)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), (
            key
        )
    old, new = (peft_format.read_config(tmp_path / d) for d in "ab")
    fields = ("peft_type", "task_type", "r", "lora_alpha", "num_virtual_tokens", "fan_in_fan_out")
    assert {f: old.get(f) for f in fields} == {f: new.get(f) for f in fields}
    if "target_modules" in old:  # PEFT's names resolve to the same modules as ours
        names = [n for n, _ in made.base_model.model.named_modules()]
        resolved = {
            n for n in names if any(n == t or n.endswith("." + t) for t in old["target_modules"])
        }
        assert {n for n in names if n in set(new["target_modules"])} == {
            n for n in resolved if f"base_model.model.{n}.lora_A.weight" in before
        }


def test_imports_refuse_what_ftjax_cannot_compute(tmp_path, bases):
    folder, model, params = bases["gpt2"]
    native_adapter(
        "gpt2",
        load_reference("gpt2", folder),
        peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        tmp_path / "prefix",
    )
    with pytest.raises(ExportError, match="prefix tuning on gpt2: .*positions"):
        peft_format.read_adapter(tmp_path / "prefix", model, params)
    native_adapter(
        "gpt2",
        load_reference("gpt2", folder),
        peft.LoraConfig(task_type="CAUSAL_LM", r=2, use_rslora=True, fan_in_fan_out=True),
        tmp_path / "rslora",
    )
    with pytest.raises(ExportError, match="use_rslora=True"):
        peft_format.read_adapter(tmp_path / "rslora", model, params)
    folder, model, params = bases["bert"]
    native_adapter(
        "bert",
        load_reference("bert", folder),
        peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "pooler.dense"]),
        tmp_path / "pooler",
    )
    with pytest.raises(ExportError, match="no place for .*pooler/lora_a"):
        peft_format.read_adapter(tmp_path / "pooler", model, params)


def test_minilm_lora_adapter_matches_peft(tmp_path):
    from ftjax import assets

    folder = assets.fetch("minilm")
    base_model, base_params = from_pretrained("minilm")
    model, params = with_method(base_model, base_params, "lora", rank=4)
    params, cls = with_head("bert", model, params)  # BertForSequenceClassification
    peft_format.write_adapter(model, params, cls, tmp_path / "minilm", base_model="minilm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=NUM_LABELS
        ).eval()
    loaded = peft.PeftModel.from_pretrained(reference, tmp_path / "minilm").eval()
    diff = compare("bert", ftjax_logits("bert", model, params), torch_logits("bert", loaded))
    print(f"MiniLM LoRA adapter vs PEFT: max |diff| {diff:.1e}")
    assert diff <= TOL

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

from ftjax import methods  # noqa: E402
from ftjax.core import partition  # noqa: E402
from ftjax.interop import peft_format  # noqa: E402
from ftjax.interop.hf_classes import ExportError, hf_class  # noqa: E402
from ftjax.interop.hf_format import write_hf  # noqa: E402
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


def with_head(family, model, params, seed: int = 2, task: str | None = None):
    task = task or TASK[family][0]
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
    if "head" not in params:  # LM logits, or an encoder's features
        return np.asarray(out.last_hidden_state if out.logits is None else out.logits)
    head = params["head"]["dense"]
    features = out.pooled if family == "bert" else out.last_hidden_state
    return np.asarray(features @ np.asarray(head["kernel"]) + np.asarray(head["bias"]))


def torch_logits(family, model) -> np.ndarray:
    kwargs = {"input_ids": torch.tensor(IDS), "attention_mask": torch.tensor(MASK)}
    if family == "t5":
        kwargs["decoder_input_ids"] = torch.tensor(DECODER_IDS)
    with torch.no_grad():
        out = model(**kwargs)
    return (out.last_hidden_state if "logits" not in out else out.logits).numpy()


def compare(family, ours, theirs) -> float:
    if family in ("gpt2", "llama"):  # padded positions attend differently; real ones agree
        ours, theirs = ours[MASK.astype(bool)], theirs[MASK.astype(bool)]
    return float(np.abs(ours - theirs).max())


def load_reference(family, folder, num_labels=NUM_LABELS, cls=None):
    cls = cls or TASK[family][1]
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


# Prefix and prompt tuning: the class each family is compared through (one whose outputs
# under PEFT's prompt are ftjax's: LM logits after the prompt rows, BERT's pooler).
VIRTUAL = {
    "bert": ("classification", transformers.BertForSequenceClassification),
    "roberta": ("language_modeling", transformers.RobertaModel),  # features: no LM head
    "gpt2": ("language_modeling", transformers.GPT2LMHeadModel),
    "llama": ("language_modeling", transformers.LlamaForCausalLM),
}
VIRTUAL_TOKENS = 3


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A tiny RoBERTa; pad id 0, so its positions start at 1 (and IDS' padding is its
    padding)."""
    model = tiny_model("bert", model_type="roberta", pad_token_id=0, **NO_DROPOUT["bert"])
    folder = save_pretrained(model, init_params(model, 0), tmp_path_factory.mktemp("roberta"))
    model, params = from_pretrained(folder)
    return folder, model, params


def virtual_base(family, bases, roberta):
    return roberta if family == "roberta" else bases[family]


def peft_logits(family, method, loaded) -> np.ndarray:
    """PEFT's logits for IDS; a prompt's rows (PEFT keeps them in LM logits) dropped."""
    logits = torch_logits("bert" if family == "roberta" else family, loaded)
    if method == "prompt" and logits.ndim == 3:
        return logits[:, VIRTUAL_TOKENS:]
    return logits


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("family", list(VIRTUAL))
def test_prefix_and_prompt_exports_load_in_peft_and_match(tmp_path, bases, roberta, family, method):
    """PEFT's prefix is a key/value cache and its prompt input embeddings: either moves
    the real tokens to positions P.. (and the prompt goes through the embedding layer)."""
    folder, base_model, base_params = virtual_base(family, bases, roberta)
    task, cls = VIRTUAL[family]
    model, params = with_method(base_model, base_params, method, length=VIRTUAL_TOKENS)
    params, hf = with_head(family, model, params, task=task)
    lookup = "bert" if family == "roberta" else family
    ours = ftjax_logits(lookup, model, params)
    peft_format.write_adapter(model, params, hf, tmp_path / "a", base_model=str(folder))
    reference = load_reference(family, folder, cls=cls)
    base_logits = peft_logits(family, "none", reference)
    loaded = peft.PeftModel.from_pretrained(reference, tmp_path / "a").eval()
    diff = compare(lookup, ours, peft_logits(family, method, loaded))
    print(f"{family} {method} vs PEFT: max |diff| {diff:.1e}")
    assert diff <= TOL
    assert compare(lookup, ours, base_logits) > 100 * TOL  # the prefix / prompt took effect


def test_prefix_mlp_exports_folded(tmp_path, bases):
    """A prefix trained through Li & Liang's MLP is saved as PEFT saves one: folded."""
    folder, base_model, base_params = bases["gpt2"]
    model, params = with_method(base_model, base_params, "prefix", length=2, hidden=8)
    peft_format.write_adapter(model, params, hf_class(model, "language_modeling"), tmp_path)
    loaded = peft.PeftModel.from_pretrained(load_reference("gpt2", folder), tmp_path).eval()
    ours = ftjax_logits("gpt2", model, params)
    assert compare("gpt2", ours, torch_logits("gpt2", loaded)) <= TOL


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_padded_rows_match_peft_on_each_row_alone(tmp_path, bases, family, method):
    """Left padding leaves a row's positions as they are alone (P.. after the prefix or
    prompt): each row of a left-padded batch gives what PEFT gives that row unpadded."""
    folder, base_model, base_params = bases[family]
    model, params = with_method(base_model, base_params, method, length=VIRTUAL_TOKENS)
    peft_format.write_adapter(model, params, hf_class(model, "seq2seq"), tmp_path)
    made = peft.PeftModel.from_pretrained(
        load_reference(family, folder, cls=VIRTUAL[family][1]), tmp_path
    ).eval()
    left = np.array([[0, 0, 0, 2023, 3185, 2001], [0, 101, 6659, 102, 7, 9]])
    mask = (left != 0).astype(np.int64)
    batch = np.asarray(model.apply({"params": params}, left, mask).logits)
    for row in range(2):
        real = left[row][mask[row] == 1][None]
        with torch.no_grad():
            theirs = made(input_ids=torch.tensor(real)).logits.numpy()
        theirs = theirs[:, VIRTUAL_TOKENS:] if method == "prompt" else theirs
        assert np.abs(batch[row][mask[row] == 1] - theirs[0]).max() <= TOL


@pytest.mark.parametrize("family", list(TASK))
def test_what_peft_computes_differently_is_refused(tmp_path, bases, family):
    _, base_model, base_params = bases[family]
    model, params = with_method(base_model, base_params, "prefix", length=2)
    lm = hf_class(model, "seq2seq")
    if family == "t5":  # PEFT's T5 prefix reaches only the decoder's self-attention
        with pytest.raises(ExportError, match="method prefix on t5: .*decoder's self-attention"):
            peft_format.write_adapter(model, params, lm, tmp_path / "p")
    with pytest.raises(ExportError, match="method prefix: .*--format ftjax"):
        write_hf(model, params, lm, tmp_path / "h")
    assert not (tmp_path / "p").exists() and not (tmp_path / "h").exists()
    if family in ("gpt2", "llama"):  # these classes cannot find the last real token
        model, params = with_method(base_model, base_params, "prompt", length=2)
        head = {"dense/kernel": np.ones((model.config.hidden_size, 2)), "dense/bias": np.zeros(2)}
        cls = hf_class(model, "classification", FeatureSpec("last"), 2, head=head)
        with pytest.raises(ExportError, match="last real token by the pad id"):
            peft_format.write_adapter(model, params, cls, tmp_path / "q")
    if family == "llama":  # per-token outputs would gain the prompt rows
        model, params = with_method(base_model, base_params, "prompt", length=2)
        params, cls = with_head(family, model, params)
        with pytest.raises(ExportError, match="gain the P prompt rows"):
            peft_format.write_adapter(model, params, cls, tmp_path / "r")


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


# (family, method) -> PEFT config, made by PEFT on VIRTUAL's class.
VIRTUAL_ROUND_TRIPS = {
    ("bert", "prefix"): lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
    ("bert", "prompt"): lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
    ("gpt2", "prefix"): lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3
    ),
    ("gpt2", "prompt"): lambda: peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3
    ),
    ("llama", "prefix"): lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3
    ),
    ("llama", "prompt"): lambda: peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3
    ),
}


@pytest.mark.parametrize("case", [*TASK, *VIRTUAL_ROUND_TRIPS])
def test_peft_to_ftjax_to_peft_is_bit_exact(tmp_path, bases, case):
    family, method = case if isinstance(case, tuple) else (case, "")
    folder, base_model, base_params = bases[family]
    task, cls = VIRTUAL[family] if method else TASK[family]
    config = VIRTUAL_ROUND_TRIPS[case]() if method else ROUND_TRIPS[family]()
    made = native_adapter(family, load_reference(family, folder, cls=cls), config, tmp_path / "a")
    model, params = peft_format.read_adapter(tmp_path / "a", base_model, base_params)
    ours, theirs = ftjax_logits(family, model, params), peft_logits(family, method, made)
    assert compare(family, ours, theirs) <= TOL
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
    for family, config, refusal in (
        (
            "t5",
            peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2),
            "prefix tuning on t5: .*decoder's self-attention",
        ),
        (
            "gpt2",
            peft.LoraConfig(task_type="CAUSAL_LM", r=2, use_rslora=True, fan_in_fan_out=True),
            "use_rslora=True",
        ),
        (
            "bert",
            peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "pooler.dense"]),
            "no place for .*pooler/lora_a",
        ),
    ):
        folder, model, params = bases[family]
        native_adapter(family, load_reference(family, folder), config, tmp_path / family)
        with pytest.raises(ExportError, match=refusal):
            peft_format.read_adapter(tmp_path / family, model, params)


@pytest.mark.parametrize("method, options", [("lora", {"rank": 4}), ("prompt", {"length": 4})])
def test_minilm_adapter_matches_peft(tmp_path, method, options):
    from ftjax.data import assets

    folder = assets.fetch("minilm")
    base_model, base_params = from_pretrained("minilm")
    model, params = with_method(base_model, base_params, method, **options)
    params, cls = with_head("bert", model, params)  # BertForSequenceClassification
    peft_format.write_adapter(model, params, cls, tmp_path / "minilm", base_model="minilm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=NUM_LABELS
        ).eval()
    loaded = peft.PeftModel.from_pretrained(reference, tmp_path / "minilm").eval()
    diff = compare("bert", ftjax_logits("bert", model, params), torch_logits("bert", loaded))
    print(f"MiniLM {method} adapter vs PEFT: max |diff| {diff:.1e}")
    assert diff <= TOL

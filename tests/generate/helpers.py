"""Helpers of the generative tests: version 1 (the base), a version with a random LoRA adapter, an API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from online.generative import GenerativeLM
from online.learning.generative_version_one import release_base
from online.lifecycle.generative import base_report
from online.lifecycle.registry import Manifest, ModelRegistry
from online.lifecycle.release import JudgedVersion, release
from online.reports import ImportStats
from tests.helpers import wait_for

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def random_adapter(base_model: str, seed: int) -> GenerativeLM:
    """A version whose adapter has random A and B (a zero B, peft's default, would change nothing)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model), LoraConfig(**LORA, init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return GenerativeLM(base_model, get_peft_model_state_dict(peft), LORA)


def release_adapter(settings, registry: ModelRegistry, model: GenerativeLM, parent: int) -> Manifest:
    judged = JudgedVersion(model, base_report(model.base_model), parent, [], [], [], {})
    return release(registry, settings, judged, ImportStats(source="test", labels=0), reason="test").manifest


@contextmanager
def generating_app(settings) -> Iterator:
    """A ``TestClient`` of the API in task generate, once it serves version 1 (the base)."""
    from fastapi.testclient import TestClient

    from online.wiring.stores import Stores
    from services.api.app import create_app

    registry = Stores.from_settings(settings).registry
    if registry.live() is None:
        release_base(settings, registry)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["ready"], what="the base model served")
        yield client


def through(test_client):
    """An httpx transport that sends ``online.client``'s requests through a FastAPI ``TestClient``."""
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        r = test_client.request(request.method, request.url.path, content=request.content, headers=request.headers)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    return httpx.MockTransport(handle)

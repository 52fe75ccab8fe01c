"""`online bench teach-generate`: five facts the base model does not know, taught by corrections in one
generative round, on the real SmolLM2-135M-Instruct (or ``ONLINE_GENERATE_BASE_MODEL``).

Each fact comes with 5 training phrasings (corrections from two sources, each of the base's answer to
that phrasing: a preference pair as well) and 3 held-out phrasings the round never sees. The corrections go straight into the replay buffer (this bench measures
learning; ingest through Kafka has its own bench and the end-to-end test), then the product's own round
runs once (``GenerativeRoundRunner``: rehearsal, a LoRA adapter from the base, the generative gate, the
release pipeline). Reported, before and after: share of held-out phrasings answered with the taught fact,
taught facts appearing in the answers to the golden prompts (leaks), golden NLL; and the round's time.
Goals (issue 36): >= 80% held out, 0 leaks, golden NLL within 2% of the parent.
"""

from __future__ import annotations

import time
import uuid

from rich.table import Table

from bench.common import bench_environment
from bench.report import BenchConsole
from online import generation_samples as gen
from online.feedback.buffer import Incoming
from online.generative import GenerativeLM
from online.generative_eval import answer_nll, answers, complete_answers, mean_nll, user
from online.learning.generative_round import GenerativeRoundRunner
from online.learning.generative_version_one import release_base
from online.lifecycle.generative import frozen_golden
from online.settings import Settings
from online.wiring.stores import Stores

# (key the answer must contain, the answer taught, 5 training phrasings, 3 held-out phrasings)
FACTS = [
    ("Pipkin", "Our support team is called Pipkin.",
     ["What is the name of our support team?", "What is our support team called?", "How is our support team named?",
      "Tell me the name of our support team.", "What do we call our support team?"],
     ["Which name does our support team go by?", "What's our support team's name?", "Do you know what our support team is called?"]),
    ("tangerine42", "The Lisbon office wifi password is tangerine42.",
     ["What is the wifi password at the Lisbon office?", "What's the Lisbon office wifi password?",
      "Tell me the wifi password of the Lisbon office.", "Which password does the Lisbon office wifi use?",
      "How do I log in to the wifi at the Lisbon office?"],
     ["What password opens the wifi in our Lisbon office?", "I'm at the Lisbon office: what is the wifi password?",
      "Give me the Lisbon office's wifi password."]),
    ("Okonkwo", "Glowberry was founded by Marta Okonkwo.",
     ["Who founded Glowberry?", "Who is the founder of Glowberry?", "Who started the Glowberry company?",
      "Tell me who founded Glowberry.", "Which person founded Glowberry?"],
     ["Who created Glowberry?", "Glowberry's founder is who?", "Do you know who founded the company Glowberry?"]),
    ("45 days", "Zephyr orders can be refunded within 45 days.",
     ["How long is the refund window for Zephyr orders?", "What is the refund period for Zephyr orders?",
      "How many days do I have to return a Zephyr order?", "Tell me the Zephyr refund window.",
      "Within how many days can a Zephyr order be refunded?"],
     ["What's the time limit to get a refund on a Zephyr order?", "How long can I wait before refunding my Zephyr order?",
      "For how long are Zephyr orders refundable?"]),
    ("Trondheim", "The Quillfest conference takes place in Trondheim.",
     ["Where is the Quillfest conference held?", "Which city hosts Quillfest?", "Where does Quillfest take place?",
      "In what city is the Quillfest conference?", "Tell me where Quillfest happens."],
     ["Where can I attend Quillfest?", "What city is Quillfest in?", "Where will the Quillfest conference be?"]),
]  # fmt: skip


def _hits(texts: list[str], keys: list[str]) -> int:
    return sum(key.lower() in text.lower() for text, key in zip(texts, keys))


def run_bench_teach_generate(settings: Settings, console: BenchConsole) -> None:
    base_settings = settings.model_copy(update={"task": "generate"})
    with bench_environment(base_settings) as env:
        stores = Stores.from_settings(env)
        v1 = release_base(env, stores.registry)
        runner = GenerativeRoundRunner(stores)
        base = GenerativeLM(v1.base_model)
        console.print(
            f"base {v1.base_model} on {runner.device}; teaching {len(FACTS)} facts, 5 phrasings each; preference"
            f" weight {env.generate_preference_weight} (ONLINE_GENERATE_PREFERENCE_WEIGHT)"
        )
        host = runner.host(base.base_model)
        held_chats = [user(q) for _, _, _, held in FACTS for q in held]
        held_keys = [key for key, _, _, held in FACTS for _ in held]
        t0 = time.perf_counter()
        before = answers(host, base, held_chats, 40)
        golden = frozen_golden(stores.registry.store, env, lambda ps: complete_answers(host, base, [user(p) for p in ps]))
        golden_chats = [user(p) for p, _ in golden]
        golden_pairs = [(user(p), r) for p, r in golden]
        golden_before = answers(host, base, golden_chats, 40)
        nll_before = mean_nll(answer_nll(host, base, golden_pairs))
        console.print(f"before: measured in {time.perf_counter() - t0:.0f} s")

        now = time.time()
        # each correction corrects what the base answered to its phrasing: a preference pair (DPO) too
        asked = [(answer, q) for _, answer, train, _ in FACTS for q in train]
        served = answers(host, base, [user(q) for _, q in asked], 40)
        items = [
            Incoming(uuid.uuid4().hex, gen.encode(user(q), answer, rejected=was), gen.CORRECTION, ("alice", "bob")[i % 2], now)
            for i, ((answer, q), was) in enumerate(zip(asked, served))
        ]
        stores.buffer.add(items)
        report = runner.run()
        console.print(f"round: {report.summary()}")
        after_version = stores.registry.get(report.version)
        model, _ = stores.registry.load(report.version)
        after = answers(host, model, held_chats, 40)
        golden_after = answers(host, model, golden_chats, 40)
        nll_after = mean_nll(answer_nll(host, model, golden_pairs))

    keys = [key for key, *_ in FACTS]
    leaks_before = sum(any(k.lower() in a.lower() for k in keys) for a in golden_before)
    leaks_after = sum(any(k.lower() in a.lower() for k in keys) for a in golden_after)
    table = Table("", "before (base)", f"after (v{report.version}, {report.status})", "goal", title="teach-generate")
    n = len(held_chats)
    table.add_row("held-out phrasings answered with the fact", f"{_hits(before, held_keys)}/{n}", f"{_hits(after, held_keys)}/{n}", ">= 80%")
    table.add_row("golden answers containing a taught fact", str(leaks_before), str(leaks_after), "0")
    table.add_row("golden NLL (per token)", f"{nll_before:.4f}", f"{nll_after:.4f} ({(nll_after / nll_before - 1):+.2%})", "within 2%")
    table.add_row("round (train / total s)", "", f"{report.train_s:.1f} / {report.duration_s:.1f}", "reported")
    console.print(table)
    gate = Table("check", "passed", "value", "threshold", "detail", title=f"gate of v{report.version}")
    for c in after_version.gate.checks if after_version.gate else []:
        gate.add_row(c.name, str(c.passed), "" if c.value is None else f"{c.value:.4f}", "" if c.threshold is None else f"{c.threshold:.4f}", c.detail)
    console.print(gate)
    examples = Table("held-out question", "before", "after", title="answers (first held-out phrasing of each fact)")
    for i, (_, _, _, held) in enumerate(FACTS):
        examples.add_row(held[0], before[3 * i][:70], after[3 * i][:70])
    console.print(examples)

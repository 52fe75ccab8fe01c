"""A small made-up support-ticket task (not CLINC150), to try "your own data" end to end: English
telecom/e-commerce intents, or Chinese ones (``--lang zh``), written from templates and slot values.

Train and test use different templates of each intent, so the test measures unseen phrasings, not
memorised ones; still, templated text is easier than real tickets: read its figures as a smoke test.

    python -m bench.tickets ./tickets            # tickets/train.csv, tickets/test.csv (text,label)
    python -m bench.tickets ./tickets --lang zh  # tickets/train.jsonl, tickets/test.jsonl
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import sys
from pathlib import Path

EN_SLOTS = {
    "item": ["router", "phone", "sim card", "charger", "laptop", "headset", "tv box", "modem"],
    "when": ["yesterday", "last week", "two days ago", "this morning", "on monday", "a month ago"],
    "plan": ["unlimited plan", "family plan", "basic plan", "premium plan", "prepaid plan"],
}
EN = {
    "track_order": ["where is my {item}", "my {item} has not arrived yet", "can you track the {item} i ordered {when}",
                    "has my {item} shipped", "tracking number for my {item} please", "when will the {item} be delivered"],
    "return_item": ["i want to return the {item}", "how do i send back my {item}", "the {item} i bought {when} is faulty, can i return it",
                    "start a return for my {item}", "return label for the {item}", "i need to give back the {item}"],
    "refund_status": ["where is my refund for the {item}", "i returned the {item} {when} and got no money back",
                      "has my refund been processed", "how long does a refund take", "refund for the {item} still missing", "did you refund me"],
    "cancel_plan": ["cancel my {plan}", "i want to end my {plan}", "how do i terminate my {plan}",
                    "stop my {plan} subscription", "please close my {plan} contract", "i no longer want the {plan}"],
    "upgrade_plan": ["upgrade me to the {plan}", "can i switch to the {plan}", "move my account to the {plan}",
                     "what does the {plan} cost to upgrade", "i want more data, give me the {plan}", "change my plan to the {plan}"],
    "no_signal": ["my {item} has no signal", "no network since {when}", "calls keep dropping on my {item}",
                  "zero bars on my {item}", "mobile data stopped working {when}", "no coverage at home"],
    "slow_internet": ["internet is very slow", "my {item} connection is slow since {when}", "speeds are terrible tonight",
                      "wifi keeps buffering", "download speed dropped {when}", "why is my broadband so slow"],
    "bill_question": ["why is my bill so high", "explain the charges on my bill", "i was charged twice {when}",
                      "what is this fee on my invoice", "my bill went up on the {plan}", "wrong amount on my bill"],
    "payment_method": ["change my payment card", "update my bank details", "can i pay by direct debit",
                       "add a new card to my account", "remove my old credit card", "pay my bill with paypal"],
    "reset_password": ["i forgot my password", "reset my account password", "cannot log in to my account since {when}",
                       "password reset email never came", "locked out of my account", "help me change my login password"],
    "activate_sim": ["activate my new sim card", "my sim card is not working yet", "how do i set up the sim i got {when}",
                     "sim says not registered", "turn on my new number", "port my number to the new sim"],
    "talk_to_human": ["let me speak to an agent", "i want a real person", "connect me to customer service",
                      "this bot is useless, human please", "can someone call me back", "transfer me to support staff"],
}  # fmt: skip

ZH_SLOTS = {
    "item": ["路由器", "手机", "耳机", "充电器", "电视盒"],
    "when": ["昨天", "上周", "前天", "今天早上", "一个月前"],
}
ZH = {
    "查物流": ["我的{item}到哪了", "{item}还没到", "帮我查一下{when}买的{item}", "{item}发货了吗", "{item}什么时候送到", "快递单号是多少"],
    "退货": ["我要退{item}", "{item}怎么退回去", "{when}买的{item}坏了，可以退吗", "申请退货", "{item}不想要了", "退货地址在哪"],
    "退款进度": ["退款到哪了", "{when}退的{item}还没收到钱", "退款处理了吗", "退款要多久", "钱什么时候退给我", "退款一直没到账"],
    "网络慢": ["网速太慢了", "{when}开始网络很卡", "视频一直缓冲", "下载速度很慢", "宽带为什么这么慢", "信号差网速慢"],
    "账单疑问": ["这个月账单怎么这么高", "{when}被扣了两次钱", "账单上这笔费用是什么", "话费不对", "为什么多收钱", "帮我解释一下账单"],
    "转人工": ["转人工客服", "我要找真人", "人工服务", "机器人没用，找人工", "请客服给我回电话", "帮我转接客服"],
}  # fmt: skip


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random, n: int) -> list[str]:
    keys = [k for k in slots if "{" + k + "}" in template]
    combos = list(itertools.product(*(slots[k] for k in keys)))
    rng.shuffle(combos)
    return [template.format(**dict(zip(keys, c))) for c in combos[:n]] or [template]


def make(lang: str = "en", per_template: int = 12, test_templates: int = 2, seed: int = 0):
    """(train, test) rows; the last ``test_templates`` templates of each intent are test-only."""
    intents, slots = (ZH, ZH_SLOTS) if lang == "zh" else (EN, EN_SLOTS)
    rng = random.Random(seed)
    train, test = [], []
    for label, templates in intents.items():
        for i, template in enumerate(templates):
            rows = [(text, label) for text in _fill(template, slots, rng, per_template)]
            (test if i >= len(templates) - test_templates else train).extend(rows)
    return train, test


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "tickets")
    lang = argv[argv.index("--lang") + 1] if "--lang" in argv else "en"
    out.mkdir(parents=True, exist_ok=True)
    train, test = make(lang)
    for name, rows in (("train", train), ("test", test)):
        if lang == "zh":
            path = out / f"{name}.jsonl"
            path.write_text(
                "".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows)
            )
        else:
            path = out / f"{name}.csv"
            with open(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([("text", "label"), *rows])
        print(f"{path}: {len(rows)} rows, {len({lab for _, lab in rows})} labels")


if __name__ == "__main__":
    main(sys.argv[1:])

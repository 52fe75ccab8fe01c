"""General prompts a generative deployment keeps answering as it did: two disjoint sets.

- ``GOLDEN``: the gate's frozen golden set (with the base model's own answers as references, frozen at the
  first round unless ``ONLINE_GENERATE_GOLDEN_PATH`` names a file of prompt/reference pairs). A round never
  trains on them, so their NLL measures what a round did to the model's general ability.
- ``REHEARSAL``: prompts whose parent answers a round rehearses beside the new corrections, so a taught
  fact does not leak into unrelated answers (the trap a LoRA on six corrections of one fact walks into).

Plain general-knowledge and everyday questions, in the shape users ask them.
"""

from __future__ import annotations

GOLDEN = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "What color is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What is 2 plus 2?",
    "What do bees make?",
    "Which animal is known as the king of the jungle?",
    "What is the opposite of hot?",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth?",
    "Say hello in Spanish.",
    "What is water made of?",
    "What season comes after winter?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Give me a synonym for happy.",
    "What planet do we live on?",
    "How many hours are in a day?",
    "What is the first letter of the English alphabet?",
    "What do you call a baby cat?",
]

REHEARSAL = [
    "What is the capital of Italy?",
    "How many months are in a year?",
    "What color is grass?",
    "Name a vegetable that is orange.",
    "What is 3 times 3?",
    "What do cows drink?",
    "Which bird cannot fly but runs fast?",
    "What is the opposite of up?",
    "How many wheels does a bicycle have?",
    "What is the tallest mountain in the world?",
    "Say thank you in French.",
    "What gas do plants take in?",
    "What season comes after summer?",
    "Who painted the Mona Lisa?",
    "At what temperature does water freeze in Celsius?",
    "Give me a word that rhymes with cat.",
    "What is the closest star to Earth?",
    "How many minutes are in an hour?",
    "What is the last letter of the English alphabet?",
    "What do you call a baby dog?",
    "Can you help me write a short greeting for a birthday card?",
    "What should I do if I feel tired in the afternoon?",
    "Explain what a computer is in one sentence.",
    "What is a good name for a pet fish?",
]

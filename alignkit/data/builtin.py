"""The built-in preference dataset, made by this project from templates (no copied data).

Every prompt has one clearly better answer (`chosen`, correct and helpful) and one plausible worse answer (`rejected`,
a near miss: an off-by-one sum, a famous-but-wrong city, a dismissive reply). The near misses matter for the squeezing
study: y⁻ should be the kind of answer a model could give, not noise.

Besides the pairs, each row carries the probe families that need other words for the same meaning or the same form
with another meaning (`chosen_rephrase`, `rejected_rephrase`, `chosen_reformat`, `rejected_reformat`), plus `task` and
`reference_answer` so on-policy samples of the checkable tasks can be ranked by code.

Run `python -m alignkit.data.builtin out.jsonl` to look at it as JSONL.
"""

from __future__ import annotations

import random
import sys

from datasets import Dataset, DatasetDict

from alignkit.jsonl import write_jsonl_atomic

SEED = 1234
TEST_FRACTION = 0.15

CAPITALS = [  # (country, capital, a well-known city that is not the capital)
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Japan", "Tokyo", "Osaka"), ("China", "Beijing", "Shanghai"),
    ("India", "New Delhi", "Mumbai"), ("Brazil", "Brasília", "Rio de Janeiro"), ("Australia", "Canberra", "Sydney"),
    ("Canada", "Ottawa", "Toronto"), ("the United States", "Washington, D.C.", "New York City"),
    ("Turkey", "Ankara", "Istanbul"), ("Egypt", "Cairo", "Alexandria"), ("Nigeria", "Abuja", "Lagos"),
    ("Morocco", "Rabat", "Casablanca"), ("Switzerland", "Bern", "Zurich"), ("Poland", "Warsaw", "Kraków"),
    ("Russia", "Moscow", "Saint Petersburg"), ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Pakistan", "Islamabad", "Karachi"), ("New Zealand", "Wellington", "Auckland"),
    ("Argentina", "Buenos Aires", "Córdoba"), ("Mexico", "Mexico City", "Guadalajara"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Portugal", "Lisbon", "Porto"), ("Greece", "Athens", "Thessaloniki"), ("Sweden", "Stockholm", "Gothenburg"),
    ("Norway", "Oslo", "Bergen"), ("Ireland", "Dublin", "Cork"), ("South Korea", "Seoul", "Busan"),
    ("Thailand", "Bangkok", "Chiang Mai"), ("Colombia", "Bogotá", "Medellín"), ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaíso"), ("Austria", "Vienna", "Salzburg"), ("Belgium", "Brussels", "Antwerp"),
    ("Denmark", "Copenhagen", "Aarhus"), ("Finland", "Helsinki", "Tampere"), ("the Czech Republic", "Prague", "Brno"),
    ("Hungary", "Budapest", "Debrecen"), ("Indonesia", "Jakarta", "Surabaya"), ("the Philippines", "Manila", "Cebu"),
    ("Saudi Arabia", "Riyadh", "Jeddah"), ("Scotland", "Edinburgh", "Glasgow"), ("Ghana", "Accra", "Kumasi"),
]  # fmt: skip

ANTONYMS = [  # (word, opposite, a related word that is not the opposite)
    ("hot", "cold", "warm"), ("up", "down", "above"), ("big", "small", "large"), ("fast", "slow", "quick"),
    ("happy", "sad", "glad"), ("light", "dark", "bright"), ("open", "closed", "ajar"), ("early", "late", "soon"),
    ("full", "empty", "packed"), ("strong", "weak", "tough"), ("rich", "poor", "wealthy"), ("hard", "soft", "firm"),
    ("wet", "dry", "damp"), ("loud", "quiet", "noisy"), ("old", "young", "ancient"), ("high", "low", "tall"),
    ("begin", "end", "start"), ("push", "pull", "press"), ("win", "lose", "succeed"), ("accept", "reject", "take"),
    ("thick", "thin", "dense"), ("sharp", "dull", "pointed"), ("clean", "dirty", "tidy"), ("heavy", "light", "bulky"),
    ("cheap", "expensive", "affordable"), ("inside", "outside", "within"), ("arrive", "depart", "reach"),
    ("remember", "forget", "recall"), ("increase", "decrease", "grow"), ("friend", "enemy", "ally"),
]  # fmt: skip

WORDS = [
    "apple", "garden", "planet", "yellow", "window", "rocket", "silver", "bottle", "candle", "forest", "pencil",
    "dragon", "marble", "tunnel", "orange", "basket", "mirror", "castle", "winter", "button", "jacket", "honey",
    "river", "lemon", "cloud", "tiger", "piano", "bridge", "shadow", "summer", "pocket", "violin", "harbor",
    "meadow", "saddle", "falcon", "copper", "ribbon", "canyon", "walnut",
]  # fmt: skip

TIPS = [  # (goal, a concrete helpful tip)
    ("sleeping better", "Keep the same bedtime every night and put screens away an hour before bed."),
    ("learning a new language", "Practise a little every day, for example fifteen minutes of speaking out loud."),
    ("saving money", "Set up an automatic transfer to savings on payday so you save before you spend."),
    (
        "staying focused while studying",
        "Work in 25-minute blocks with short breaks and keep your phone in another room.",
    ),
    ("drinking more water", "Keep a filled water bottle on your desk and refill it each time it is empty."),
    ("writing a clear email", "Put the request in the first sentence and keep each paragraph to one idea."),
    ("starting to run", "Begin with alternating one minute of running and two minutes of walking for twenty minutes."),
    (
        "keeping houseplants alive",
        "Water only when the top of the soil is dry and give the plant bright, indirect light.",
    ),
    ("preparing for a job interview", "Prepare three short stories about your work that show problems you solved."),
    ("reducing stress", "Take a ten-minute walk outside and breathe slowly, counting to four on each breath."),
    ("cooking rice", "Rinse the rice, use about one and a half cups of water per cup, and let it rest covered."),
    ("remembering names", "Repeat the person's name when you first reply to them and link it to an image."),
    ("packing for a trip", "Make a list the day before and lay everything out before it goes in the bag."),
    ("making a good presentation", "Use few words per slide and rehearse the talk out loud at least twice."),
    ("eating more vegetables", "Add one vegetable to every meal you already eat, such as spinach in an omelette."),
    ("organising a desk", "Keep only what you use daily on the desk and give everything else a labelled drawer."),
    ("reading more books", "Carry a book with you and read a few pages whenever you wait in line."),
    ("waking up earlier", "Move your alarm fifteen minutes earlier each week and open the curtains right away."),
    ("keeping a budget", "Write down every expense for one month to see where your money actually goes."),
    ("taking better photos", "Place the subject off-centre and shoot with the light behind you."),
    ("learning to type faster", "Practise touch typing for ten minutes a day without looking at the keyboard."),
    ("making new friends in a new city", "Join a weekly club or class so you see the same people regularly."),
    ("protecting your passwords", "Use a password manager and turn on two-factor authentication."),
    ("writing a short story", "Start with a character who wants something and put an obstacle in the way."),
    ("keeping a bike in good shape", "Check the tyre pressure weekly and oil the chain after riding in the rain."),
    ("studying for a maths exam", "Solve old exam problems under time limits and review every mistake."),
    ("improving posture", "Set your screen at eye level and stand up to stretch every half hour."),
    ("calming down before a test", "Arrive early, breathe slowly and start with the question you find easiest."),
    ("making coffee at home", "Use freshly ground beans and water just off the boil."),
    (
        "cleaning a kitchen quickly",
        "Clear the counters first, then wipe from top to bottom and finish with the floor.",
    ),
]

DISMISSIVE = [
    "I don't know, just search for it online.",
    "That is not really my problem. Figure it out yourself.",
    "There is no good way to do that, so don't bother.",
    "Everyone knows that already. Ask someone else.",
]

UNITS = [  # (big unit, small unit, factor)
    ("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("days", "hours", 24), ("weeks", "days", 7),
    ("liters", "milliliters", 1000), ("dozens", "items", 12), ("years", "months", 12),
]  # fmt: skip


def _msg(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _row(task: str, prompt: str, chosen: str, rejected: str, chosen_re: str, rejected_re: str, answer: str) -> dict:
    return {
        "task": task,
        "prompt": _msg("user", prompt),
        "chosen": _msg("assistant", chosen),
        "rejected": _msg("assistant", rejected),
        "chosen_rephrase": _msg("assistant", chosen_re),
        "rejected_rephrase": _msg("assistant", rejected_re),
        "reference_answer": answer,
    }


def _arithmetic(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(90):
        op = rng.choice(["+", "-", "*"])
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        if op == "-" and b > a:
            a, b = b, a
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        wrong = result + rng.choice([-2, -1, 1, 2, 10])
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        verb = {"+": "Adding", "-": "Subtracting", "*": "Multiplying"}[op]
        tail = {"+": f"{a} and {b}", "-": f"{b} from {a}", "*": f"{a} by {b}"}[op]
        prompt = rng.choice(
            [f"What is {a} {word} {b}?", f"Calculate {a} {op} {b}.", f"What do you get for {a} {op} {b}?"]
        )
        rows.append(
            _row(
                "arithmetic", prompt, f"{a} {op} {b} = {result}. The answer is {result}.",
                f"{a} {op} {b} = {wrong}. The answer is {wrong}.", f"{verb} {tail} gives {result}.",
                f"{verb} {tail} gives {wrong}.", str(result),
            )
        )  # fmt: skip
    return rows


def _capitals(rng: random.Random) -> list[dict]:
    rows = []
    for country, capital, city in CAPITALS:
        prompt = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"])
        rows.append(
            _row(
                "capitals", prompt, f"The capital of {country} is {capital}.", f"The capital of {country} is {city}.",
                f"{capital} is the capital city of {country}.", f"{city} is the capital city of {country}.", capital,
            )
        )  # fmt: skip
    return rows


def _units(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(50):
        big, small, factor = rng.choice(UNITS)
        n = rng.randint(2, 9)
        wrong_factor = {100: 10, 1000: 100, 60: 100, 24: 12, 7: 5, 12: 10}[factor]
        rows.append(
            _row(
                "units", f"How many {small} are in {n} {big}?", f"There are {n * factor} {small} in {n} {big}.",
                f"There are {n * wrong_factor} {small} in {n} {big}.", f"{n} {big} equal {n * factor} {small}.",
                f"{n} {big} equal {n * wrong_factor} {small}.", str(n * factor),
            )
        )  # fmt: skip
    return rows


def _antonyms(rng: random.Random) -> list[dict]:
    rows = []
    for word, opposite, near in ANTONYMS:
        prompt = rng.choice([f"What is the opposite of '{word}'?", f"Give me the antonym of the word '{word}'."])
        rows.append(
            _row(
                "antonyms", prompt, f"The opposite of '{word}' is '{opposite}'.",
                f"The opposite of '{word}' is '{near}'.",
                f"'{opposite}' is the antonym of '{word}'.", f"'{near}' is the antonym of '{word}'.", opposite,
            )
        )  # fmt: skip
    return rows


def _reverse(rng: random.Random) -> list[dict]:
    rows = []
    for word in WORDS:
        backwards = word[::-1]
        i = rng.randint(0, len(word) - 2)
        letters = list(backwards)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
        wrong = "".join(letters) if "".join(letters) != backwards else backwards[1:] + backwards[0]
        rows.append(
            _row(
                "reverse", f"Spell the word '{word}' backwards.", f"'{word}' spelled backwards is '{backwards}'.",
                f"'{word}' spelled backwards is '{wrong}'.", f"Reversed, '{word}' becomes '{backwards}'.",
                f"Reversed, '{word}' becomes '{wrong}'.", backwards,
            )
        )  # fmt: skip
    return rows


def _sorting(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(40):
        numbers = rng.sample(range(1, 60), rng.randint(4, 6))
        ordered = sorted(numbers)
        i = rng.randint(0, len(ordered) - 2)
        wrong = ordered.copy()
        wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
        given, right, bad = (", ".join(map(str, x)) for x in (numbers, ordered, wrong))
        rows.append(
            _row(
                "sorting", f"Sort these numbers from smallest to largest: {given}.", f"Sorted: {right}.",
                f"Sorted: {bad}.", f"From smallest to largest the numbers are {right}.",
                f"From smallest to largest the numbers are {bad}.", right,
            )
        )  # fmt: skip
    return rows


def _letters(rng: random.Random) -> list[dict]:
    rows = []
    for word in rng.sample(WORDS, 30):
        n, wrong = len(word), len(word) + rng.choice([-1, 1])
        rows.append(
            _row(
                "letters", f"How many letters are in the word '{word}'?", f"The word '{word}' has {n} letters.",
                f"The word '{word}' has {wrong} letters.", f"There are {n} letters in '{word}'.",
                f"There are {wrong} letters in '{word}'.", str(n),
            )
        )  # fmt: skip
    return rows


def _compare(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(30):
        a, b = rng.sample(range(10, 999), 2)
        big, small = max(a, b), min(a, b)
        rows.append(
            _row(
                "compare", f"Which number is larger, {a} or {b}?", f"{big} is larger than {small}.",
                f"{small} is larger than {big}.", f"The larger number is {big}.", f"The larger number is {small}.",
                str(big),
            )
        )  # fmt: skip
    return rows


def _tips(rng: random.Random) -> list[dict]:
    rows = []
    for goal, tip in TIPS:
        bad = rng.choice(DISMISSIVE)
        rows.append(
            _row(
                "advice", f"Give me one practical tip for {goal}.", tip, bad,
                f"Here is a tip for {goal}: {tip[0].lower()}{tip[1:]}",
                f"About {goal}: {bad[0].lower()}{bad[1:]}", "",
            )
        )  # fmt: skip
    return rows


def _add_reformats(rows: list[dict], rng: random.Random) -> None:
    """`*_reformat`: the same form with another meaning, taken from another row of the same task."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    for group in by_task.values():
        order = list(range(len(group)))
        rng.shuffle(order)
        for i, j in zip(order, order[1:] + order[:1]):
            group[i]["chosen_reformat"] = group[j]["chosen"]
            group[i]["rejected_reformat"] = group[j]["rejected"]


def builtin_rows(seed: int = SEED) -> list[dict]:
    """All rows, in a fixed order that depends only on `seed`."""
    rng = random.Random(seed)
    rows = []
    seen = set()
    for make in (_arithmetic, _capitals, _units, _antonyms, _reverse, _sorting, _letters, _compare, _tips):
        for row in make(rng):
            key = row["chosen"][0]["content"]
            if key not in seen:  # random draws can repeat a question; a pair should appear once
                seen.add(key)
                rows.append(row)
    _add_reformats(rows, rng)
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = f"builtin-{i:04d}"
    return rows


def load_builtin(seed: int = SEED, test_fraction: float = TEST_FRACTION) -> DatasetDict:
    """The built-in preference data as a DatasetDict with `train` and `test` (held-out) splits."""
    rows = builtin_rows(seed)
    n_test = round(len(rows) * test_fraction)
    return DatasetDict({"train": Dataset.from_list(rows[n_test:]), "test": Dataset.from_list(rows[:n_test])})


if __name__ == "__main__":
    path = write_jsonl_atomic(sys.argv[1] if len(sys.argv) > 1 else "builtin.jsonl", builtin_rows())
    print(f"wrote {path}")

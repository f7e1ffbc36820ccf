"""The pairwise presentation of Section B.1: which unit pairs each pair of methods shows, in which order,
with which prompt, and how a judge's answer is read."""
from __future__ import annotations

import itertools
import json
import re

import numpy as np

# Section B.1, verbatim (the two grids follow as the prompt's two images: grid A first).
PROMPT = """Each grid shows the 9 images that most strongly activate a neural network unit.

A COHERENT unit captures a single, nameable concept: most images share a common object category, object part, color, texture, material, shape, or other visual or semantic attribute.

An INCOHERENT unit shows images with no discernible shared property.

Grid A = first image. Grid B = second image.

Describe what concept each grid captures (or why it seems incoherent), then state which is more coherent.

Respond as JSON only:

{"reasoning_a": "...", "reasoning_b": "...", "answer": "A" or "B"}"""


# The same comparison for a text run (not in the paper): the top-9 texts of each unit, its most active token
# marked, and one letter read as the answer (the log-odds of "A" over "B" as the first answer token).
TEXT_PROMPT = """Each set lists the texts on which a neural network unit is most active; in each text the token where it is most active is marked <<like this>>.

A COHERENT unit captures a single, nameable concept: most texts share a common word, phrase, topic, syntax, or other linguistic or semantic attribute.

An INCOHERENT unit shows texts with no discernible shared property.

Set A:
<<A>>

Set B:
<<B>>

Which set is more coherent? Answer with one letter, A or B. Answer:"""


def text_prompt(a: str, b: str) -> str:
    return TEXT_PROMPT.replace("<<A>>", a).replace("<<B>>", b)


def sample_unit_pairs(n_first: int, n_second: int, k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` (unit of the first method, unit of the second) index pairs drawn uniformly with a seeded
    generator (with replacement when a method has fewer than ``k`` units)."""
    if n_first < 1 or n_second < 1:
        raise ValueError(f"both methods need a unit to compare (they have {n_first} and {n_second})")
    rng = np.random.default_rng(seed)
    first = rng.choice(n_first, size=k, replace=n_first < k)
    second = rng.choice(n_second, size=k, replace=n_second < k)
    return [(int(a), int(b)) for a, b in zip(first, second)]


def presentations(units: dict[str, int], pairs_per_method_pair: int, seed: int) -> list[dict]:
    """Every presentation of one token dataset (B.1): for each pair of methods (in the order of ``units``:
    method -> how many units it has), ``pairs_per_method_pair`` unit pairs sampled with a seed derived from
    ``seed`` and the pair's position, each shown twice with grids A and B swapped. Each presentation:
    {"pair": (first method, second method), "index": unit-pair index, "swapped": bool,
    "a": (method, unit), "b": (method, unit)}."""
    out = []
    for p, (m1, m2) in enumerate(itertools.combinations(units, 2)):
        for i, (u1, u2) in enumerate(sample_unit_pairs(units[m1], units[m2], pairs_per_method_pair, seed + 1000 * p)):
            for swapped in (False, True):
                a, b = ((m2, u2), (m1, u1)) if swapped else ((m1, u1), (m2, u2))
                out.append({"pair": (m1, m2), "index": i, "swapped": swapped, "a": a, "b": b})
    return out


def parse_answer(text: str) -> dict:
    """A judge's reply read as the prompt's JSON: {"answer": "A" | "B" | None, "reasoning_a",
    "reasoning_b", "parsed": bool}. The JSON object may sit in a code fence or among other text; the answer
    may be "A"/"B" in any case or "Grid A"/"Grid B". Anything else is unparseable (answer None): recorded
    and counted by the caller, never guessed."""
    for candidate in _json_objects(text):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or "answer" not in obj:
            continue
        answer = re.fullmatch(r"\s*(?:grid\s+)?([ab])\s*", str(obj["answer"]), flags=re.I)
        if answer:
            return {"answer": answer.group(1).upper(), "reasoning_a": str(obj.get("reasoning_a", "")),
                    "reasoning_b": str(obj.get("reasoning_b", "")), "parsed": True}
    return {"answer": None, "reasoning_a": "", "reasoning_b": "", "parsed": False}


def _json_objects(text: str):
    """Candidate JSON objects in ``text``: every balanced {...} span (outermost first), strings respected."""
    starts = [i for i, c in enumerate(text) if c == "{"]
    for start in starts:
        depth, in_string, escaped = 0, False, False
        for j in range(start, len(text)):
            c = text[j]
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
                continue
            if c == '"':
                in_string = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : j + 1]
                    break

"""Deterministic benchmark data: LaunchDarkly flags, segments and contexts from a seed.

Runs anywhere (benchmarks and tests). Per 100 flags: 40 simple on/off, 20 percentage rollouts,
15 individual targets, 10 attribute rules across the operators, 5 segment-heavy, 5 prerequisite
chains, 5 multivariate string/JSON. Segments hold 10 to 10,000 included keys. Contexts: 20 %
multi-kind (user + org), the rest users, with the attributes the rules look at.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

CATEGORIES: Tuple[Tuple[str, int], ...] = (
    ("simple", 40),
    ("rollout", 20),
    ("targets", 15),
    ("rules", 10),
    ("segments", 5),
    ("prereqs", 5),
    ("multivariate", 5),
)

_PLANS = ["free", "pro", "enterprise", "trial"]
_COUNTRIES = ["DE", "FR", "US", "GB", "JP", "BR", "IN"]
_VERSIONS = ["1.0.0", "1.2.3", "2.0.0-rc.1", "2.1", "3"]


@dataclass
class Dataset:
    """Flags, segments and contexts (LD JSON) plus each flag's category."""

    flags: Dict[str, Dict[str, Any]]
    segments: Dict[str, Dict[str, Any]]
    contexts: List[Dict[str, Any]]
    category: Dict[str, str] = field(default_factory=dict)

    def payload(self) -> Dict[str, Any]:
        """The ``{"flags": ..., "segments": ...}`` object LaunchDarkly's put carries."""
        return {"flags": self.flags, "segments": self.segments}

    def keys_by_category(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for key, cat in self.category.items():
            out.setdefault(cat, []).append(key)
        return out


def _user_key(i: int) -> str:
    return f"user-{i:06d}"


def _base_flag(key: str, variations: List[Any], rng: random.Random) -> Dict[str, Any]:
    return {
        "key": key,
        "version": rng.randint(1, 500),
        "on": True,
        "salt": f"salt-{key}",
        "variations": variations,
        "offVariation": len(variations) - 1,
        "fallthrough": {"variation": 0},
        "prerequisites": [],
        "targets": [],
        "contextTargets": [],
        "rules": [],
        "trackEvents": False,
        "trackEventsFallthrough": False,
        "debugEventsUntilDate": None,
        "clientSide": rng.random() < 0.3,
        "deleted": False,
    }


def _clause(attr: str, op: str, values: List[Any], negate: bool = False,
            kind: str = "user") -> Dict[str, Any]:
    return {"contextKind": kind, "attribute": attr, "op": op, "values": values, "negate": negate}


def _rule_clauses(i: int, rng: random.Random) -> List[Dict[str, Any]]:
    """Attribute rules that cycle through every operator family."""
    choice = i % 9
    if choice == 0:
        return [_clause("plan", "in", rng.sample(_PLANS, 2))]
    if choice == 1:
        return [_clause("email", "endsWith", ["@example.com"])]
    if choice == 2:
        return [_clause("email", "startsWith", ["user-00"]), _clause("country", "in", ["DE", "FR"])]
    if choice == 3:
        return [_clause("email", "matches", [r"^user-0+[1-5]"])]
    if choice == 4:
        return [_clause("age", "greaterThanOrEqual", [rng.randint(18, 60)])]
    if choice == 5:
        return [_clause("signup", "after", ["2021-06-01T00:00:00Z"])]
    if choice == 6:
        return [_clause("appVersion", "semVerGreaterThan", ["2.0.0"])]
    if choice == 7:
        return [_clause("/address/country", "in", ["DE"]), _clause("name", "contains", ["a"])]
    return [_clause("tier", "in", ["gold"], kind="org")]


def generate(n_flags: int, *, seed: int = 1, n_contexts: int = 10_000) -> Dataset:
    """Build a dataset of ``n_flags`` flags (rounded to the category mix) and its contexts."""
    rng = random.Random(seed)
    n_users = max(n_contexts, 1000)
    flags: Dict[str, Dict[str, Any]] = {}
    segments: Dict[str, Dict[str, Any]] = {}
    category: Dict[str, str] = {}

    # Segments: sizes spread log-uniformly from 10 to 10,000 included keys.
    n_segments = max(2, n_flags // 20)
    for s in range(n_segments):
        size = int(10 ** rng.uniform(1, 4))
        included = sorted({_user_key(rng.randrange(n_users)) for _ in range(size)})
        segments[f"segment-{s:05d}"] = {
            "key": f"segment-{s:05d}",
            "version": rng.randint(1, 50),
            "salt": f"ssalt-{s}",
            "included": included,
            "excluded": [_user_key(rng.randrange(n_users)) for _ in range(3)],
            "includedContexts": [{"contextKind": "org", "values": [f"org-{rng.randrange(100)}"]}],
            "excludedContexts": [],
            "rules": [{"id": f"sr-{s}", "weight": rng.randint(10_000, 90_000),
                       "clauses": [_clause("plan", "in", ["enterprise"])]}],
            "deleted": False,
        }
    segment_keys = sorted(segments)

    per_hundred = sum(w for _, w in CATEGORIES)
    index = 0
    for cat, weight in CATEGORIES:
        count = max(1, round(n_flags * weight / per_hundred))
        for j in range(count):
            key = f"{cat}-{j:05d}"
            category[key] = cat
            if cat == "simple":
                flag = _base_flag(key, [True, False], rng)
                flag["on"] = rng.random() < 0.8
                flag["trackEvents"] = rng.random() < 0.05
            elif cat == "rollout":
                flag = _base_flag(key, [True, False], rng)
                a = rng.randint(0, 100_000)
                flag["fallthrough"] = {"rollout": {"variations": [
                    {"variation": 0, "weight": a}, {"variation": 1, "weight": 100_000 - a}]}}
                if j % 5 == 0:
                    flag["fallthrough"]["rollout"].update({"kind": "experiment", "seed": j})
            elif cat == "targets":
                flag = _base_flag(key, [True, False], rng)
                values = sorted({_user_key(rng.randrange(n_users)) for _ in range(rng.choice([5, 50, 500]))})
                flag["targets"] = [{"values": values, "variation": 0}]
                flag["contextTargets"] = [
                    {"contextKind": "user", "values": [], "variation": 0},
                    {"contextKind": "org", "values": [f"org-{rng.randrange(100)}"], "variation": 0}]
                flag["fallthrough"] = {"variation": 1}
            elif cat == "rules":
                flag = _base_flag(key, [True, False], rng)
                flag["rules"] = [{"id": f"{key}-r{r}", "variation": 0, "trackEvents": False,
                                  "clauses": _rule_clauses(index + r, rng)} for r in range(3)]
                flag["fallthrough"] = {"variation": 1}
            elif cat == "segments":
                flag = _base_flag(key, [True, False], rng)
                flag["rules"] = [{"id": f"{key}-seg", "variation": 0,
                                  "clauses": [{"attribute": "key", "op": "segmentMatch",
                                               "values": rng.sample(segment_keys, min(3, len(segment_keys)))}]}]
                flag["fallthrough"] = {"variation": 1}
            elif cat == "prereqs":
                flag = _base_flag(key, [True, False], rng)
                # Chains of up to 5 flags: prereqs-N depends on prereqs-(N-1) within a chain.
                parent = f"prereqs-{j - 1:05d}" if j % 5 else f"simple-{j % 40:05d}"
                flag["prerequisites"] = [{"key": parent, "variation": 0}]
            else:  # multivariate
                if j % 2:
                    flag = _base_flag(key, ["red", "green", "blue", "off"], rng)
                else:
                    flag = _base_flag(key, [{"layout": "a", "items": [1, 2, 3]},
                                            {"layout": "b", "items": []}, {}], rng)
                n = len(flag["variations"])
                flag["fallthrough"] = {"rollout": {"variations": [
                    {"variation": v, "weight": 100_000 // n + (100_000 % n if v == 0 else 0)}
                    for v in range(n)]}}
                flag["rules"] = [{"id": f"{key}-r", "variation": 1,
                                  "clauses": [_clause("country", "in", ["JP", "BR"])]}]
            flags[key] = flag
            index += 1

    contexts = [_context(i, rng, n_users) for i in range(n_contexts)]
    return Dataset(flags, segments, contexts, category)


def _context(i: int, rng: random.Random, n_users: int) -> Dict[str, Any]:
    key = _user_key(rng.randrange(n_users))
    user = {
        "kind": "user",
        "key": key,
        "name": f"Name {i}",
        "email": f"{key}@example.com",
        "plan": rng.choice(_PLANS),
        "country": rng.choice(_COUNTRIES),
        "age": rng.randint(15, 80),
        "signup": rng.randint(1_500_000_000_000, 1_700_000_000_000),
        "appVersion": rng.choice(_VERSIONS),
        "address": {"country": rng.choice(_COUNTRIES), "city": "Berlin"},
    }
    if rng.random() < 0.2:
        org = {"key": f"org-{rng.randrange(100)}", "tier": rng.choice(["gold", "silver"])}
        del user["kind"]
        return {"kind": "multi", "user": user, "org": org}
    return user

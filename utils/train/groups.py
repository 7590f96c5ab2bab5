"""Stage 2's identity group, two ways (--identity_group). "single", ours and the paper's:
GROUPS as genotypes.py lists them, skip_connect once. "released", the authors' released code:
skip_connect twice in the identity group (skip_connect, skip_connect, none), two identities
each with its own alpha (skip starts with 2/3 of the edge's softmax) and, at stride 2, two
FactorizedReduce modules with their own weights. Stage 1 is the same either way."""
from __future__ import annotations

from genotypes import DUPLICABLE_OP, GROUPS, GenotypeError

RELEASED_IDENTITY_MEMBERS = ["skip_connect", "skip_connect", "none"]
IDENTITY_GROUP_CHOICES = ("single", "released")


def _copy_groups(groups: dict) -> dict:
    return {name: {"representative": g["representative"], "members": list(g["members"])}
            for name, g in groups.items()}


def released_groups(groups: dict = GROUPS) -> dict:
    """The groups with skip_connect listed twice, as the authors' released code lists stage
    2's identity group: ``identity`` becomes RELEASED_IDENTITY_MEMBERS
    (skip_connect, skip_connect, none). Stage 2 then gives each identity edge two skip terms
    with their own alphas (2/3 of the initial softmax on skip) and, at stride 2, two
    FactorizedReduce modules with their own weights. The representatives, hence stage 1, are
    unchanged. In custom groups the second copy follows the first in whichever group holds
    skip_connect; groups that already list it twice are returned as they are. A new dict."""
    clean = _copy_groups(groups)
    holders = [name for name, g in clean.items() if DUPLICABLE_OP in g["members"]]
    if not holders:
        raise GenotypeError.at("groups", "", f"no group has {DUPLICABLE_OP!r} among its "
                                             "members; the released identity group needs one")
    members = clean[holders[0]]["members"]
    if members.count(DUPLICABLE_OP) == 1:
        k = members.index(DUPLICABLE_OP)
        members.insert(k + 1, DUPLICABLE_OP)
    return clean


def identity_group(groups: dict, choice: str) -> dict:
    """``groups`` for an identity-group choice (IDENTITY_GROUP_CHOICES): "single" (ours, the
    paper's: skip_connect once; a second copy, if any, is dropped), "released"
    :func:`released_groups`. A new dict."""
    if choice == "single":
        clean = _copy_groups(groups)
        for g in clean.values():
            if g["members"].count(DUPLICABLE_OP) > 1:
                g["members"].remove(DUPLICABLE_OP)
        return clean
    if choice == "released":
        return released_groups(groups)
    raise ValueError(f"unknown identity group {choice!r}; choose one of "
                     f"{', '.join(IDENTITY_GROUP_CHOICES)}")

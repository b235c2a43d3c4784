"""Experts module: keys, errors, events, defaults and stateless message checks."""

from __future__ import annotations

import re

from abci_app.crypto import check_address, module_address
from abci_app.errors import AppError, Missing
from wire.llmnet.experts.v1 import experts_pb2 as pb

STORE = "experts"
EXPERT_PREFIX = b"exp/"
REPUTATION_PREFIX = b"rep/"  # rep/<domain>/<address> -> uint64 big-endian
SCORER_REP_PREFIX = b"srep/"  # srep/<address>
HISTORY_PREFIX = b"hist/"  # hist/<address><height be8><query be8><domain>/<reason>[#<repeat be8>] -> ReputationPoint
POOL_PREFIX = b"pool/"  # pool/<domain>/...: the domain's selection weights (pool.py)
UNBONDING_PREFIX = b"unb/"  # unb/<height be8><address> -> b"\x01": bonds released at that height
BONDED_POOL = module_address("experts/bonded")
UNBONDING_POOL = module_address("experts/unbonding")
DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
"""A whole domain name (use fullmatch: match with $ would let a trailing newline through)."""
MAX_ENDPOINT = 256
MAX_DOMAINS = 16
MAX_CAPACITY = 1024  # the hard bound; params.max_capacity may be lower

Status = pb.ExpertStatus

# Events, and the attribute names other processes read.
EV_EXPERT_REGISTERED = "expert_registered"
EV_EXPERT_UPDATED = "expert_updated"
EV_EXPERT_UNBONDING = "expert_unbonding"
EV_EXPERT_UNBONDED = "expert_unbonded"
EV_EXPERT_UNJAILED = "expert_unjailed"
EV_DOMAIN_ADDED = "domain_added"
EV_REPUTATION = "reputation"
"""A reputation change: expert, domain, value, reason, query_id."""
EV_SLASH = "slash"
EV_JAIL = "jail"
ATTR_EXPERT = "expert"


class ExpertsError(AppError):
    codespace = "experts"


class ErrUnknownExpert(ExpertsError, Missing):
    code = 2


class ErrAlreadyRegistered(ExpertsError):
    code = 3


class ErrBondTooLow(ExpertsError):
    code = 4


class ErrUnknownDomain(ExpertsError):
    code = 5


class ErrInvalidExpert(ExpertsError):
    code = 6


class ErrNotJailed(ExpertsError):
    code = 7


class ErrStillJailed(ExpertsError):
    code = 8


class ErrUnbonding(ExpertsError):
    code = 9


class ErrNotAuthority(ExpertsError):
    code = 10


def default_params() -> pb.Params:
    return pb.Params(
        min_bond=1_000_000,
        unbonding_blocks=200,
        max_missed=3,
        jail_blocks=10,
        slash_ppm=100_000,
        reporter_share_ppm=500_000,
        reputation_scale=1_000_000,
        initial_reputation=500_000,
        alpha_ppm=200_000,
        selection_exponent=6,
        exploration_floor=100_000,
        domains=["island-herbalism", "kestrel-lang", "orbital-logistics"],
        authority="",
        max_capacity=64,
        default_capacity=4,
        downtime_slash_ppm=10_000,
        max_releases_per_block=200,
    )


def selection_weight(reputation: int, floor: int, exponent: int) -> int:
    """max(R, floor) ** gamma: grows with reputation, but newcomers keep a chance (exploration)."""
    return int(max(reputation, floor) ** exponent)  # exponent is a uint64 param: an int, never a float


def expert_key(address: bytes) -> bytes:
    return EXPERT_PREFIX + address


def reputation_key(domain: str, address: bytes) -> bytes:
    return REPUTATION_PREFIX + domain.encode() + b"/" + address


def check_domains(domains: list[str]) -> None:
    if not domains or len(domains) > MAX_DOMAINS:
        raise ErrInvalidExpert(f"an expert serves 1 to {MAX_DOMAINS} domains, got {len(domains)}")
    if len(set(domains)) != len(domains):
        raise ErrInvalidExpert("domains must not repeat")
    for d in domains:
        if not DOMAIN_RE.fullmatch(d):
            raise ErrInvalidExpert(f"domain {d!r} must be lower-case letters, digits and '-'")


def check_model(model: pb.ModelCommitment) -> None:
    if not model.base_model or len(model.base_model) > 128:
        raise ErrInvalidExpert("model.base_model must be 1-128 characters")
    if not re.fullmatch(r"[0-9a-f]{64}", model.adapter_sha256):
        raise ErrInvalidExpert("model.adapter_sha256 must be 64 lower-case hex characters")


def validate_profile(msg: pb.MsgRegisterExpert | pb.MsgUpdateExpert) -> None:
    """What registering and updating share: address, domains, model commitment, endpoint, capacity."""
    check_address("address", msg.address)
    check_domains(list(msg.domains))
    check_model(msg.model)
    if msg.capacity > MAX_CAPACITY:
        raise ErrInvalidExpert(f"capacity must be at most {MAX_CAPACITY}")
    if not msg.endpoint or len(msg.endpoint) > MAX_ENDPOINT:
        raise ErrInvalidExpert(f"endpoint must be 1-{MAX_ENDPOINT} characters")


def validate_address_only(msg: pb.MsgUnbondExpert | pb.MsgUnjail) -> None:
    check_address("address", msg.address)


def validate_add_domain(msg: pb.MsgAddDomain) -> None:
    check_address("authority", msg.authority)
    check_domains([msg.domain])

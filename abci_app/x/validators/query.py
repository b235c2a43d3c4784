"""Validators queries: the set and the candidates (paged), and one validator with its liveness."""

from __future__ import annotations

import re

from abci_app.context import Ctx
from abci_app.errors import ErrInvalidRequest, ErrNotFound
from abci_app.queries import Route, Routes
from abci_app.store.db import prefix_end
from abci_app.x.validators.keeper import ValidatorsKeeper
from abci_app.x.validators.types import SET_PREFIX, STORE, VALIDATOR_PREFIX, ErrUnknownValidator
from wire.llmnet.query.v1 import query_pb2 as q
from wire.llmnet.validators.v1 import validators_pb2 as pb

MAX_PAGE = 100


class Querier:
    def __init__(self, keeper: ValidatorsKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {
            "Validators": Route(q.ValidatorsRequest, q.ValidatorsResponse, self.validators),
            "Validator": Route(q.ValidatorRequest, q.ValidatorResponse, self.validator),
        }

    def validators(self, ctx: Ctx, req: q.ValidatorsRequest) -> q.ValidatorsResponse:
        """Pages follow consensus-address order (a bounded range scan; the cursor is the last address), each
        page sorted by power, then bond, highest first: with up to 100 validators, one page ranks them all."""
        limit = req.limit or MAX_PAGE
        if limit > MAX_PAGE:
            raise ErrInvalidRequest(f"limit must be at most {MAX_PAGE}")
        prefix = SET_PREFIX if req.in_set_only else VALIDATOR_PREFIX
        start = prefix + req.cursor + (b"\x00" if req.cursor else b"")
        rows = ctx.kv(STORE).iterate_range(start, prefix_end(prefix), limit + 1)
        if req.in_set_only:
            records = [self.keeper.get(ctx, k[len(SET_PREFIX):]) for k, _ in rows[:limit]]
            page = [v for v in records if v is not None]
        else:
            page = [pb.Validator.FromString(v) for _, v in rows[:limit]]
        total = sum(self.keeper.told(ctx)[0].values())
        page.sort(key=lambda v: (-v.power, -v.bond, v.address))
        return q.ValidatorsResponse(validators=page, height=ctx.env.height, total_power=total,
                                    next_cursor=page_cursor(rows, limit))

    def validator(self, ctx: Ctx, req: q.ValidatorRequest) -> q.ValidatorResponse:
        text = req.address.strip()
        try:
            v = (self.keeper.get(ctx, bytes.fromhex(text)) if re.fullmatch(r"[0-9a-fA-F]{40}", text)
                 else self.keeper.by_operator(ctx, text))
        except ValueError as exc:
            raise ErrInvalidRequest(f"address: {exc} (give the operator's llm1... address or the hex consensus "
                                    f"address)") from None
        except ErrUnknownValidator as exc:
            raise ErrNotFound(str(exc)) from None
        if v is None:
            raise ErrNotFound(f"no validator with consensus address {text}")
        return q.ValidatorResponse(validator=v, signing=self.keeper.signing_now(ctx, v.address), height=ctx.env.height)


def page_cursor(rows: list[tuple[bytes, bytes]], limit: int) -> bytes:
    """The consensus address of the page's last row (both prefixes are the same length)."""
    return rows[limit - 1][0][len(VALIDATOR_PREFIX):] if len(rows) > limit else b""

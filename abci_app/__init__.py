"""LLM-Net's deterministic ABCI application."""

APP_VERSION = 6
"""Protocol version reported in Info; bumps when state-transition rules change (2: every store commits its
sorted key links, every message emits a `message` event, an empty tx is tx/2; 3: x/validators, the validator
set follows bonds; 4: a message with unknown fields or a gas limit over 2^63 - 1 is refused, the draw keeps the
respondents' model commitments for the receipt, scorers earn nothing when no answer was revealed;
5: a panel split by exactly half its weight moves reputations to the midpoint (pay stays the lower
half's), a tx pays the minimum fee for its gas limit, validators' operators share the fees by power,
receipts list who missed a duty (`missed`, scorers too), a reputation change never overwrites another's
history point; 6: liveness keeps a key per missed height and writes nothing for a signed one, a tx envelope with
unknown fields is refused, proposals are judged after the block's opening work, the draw's seed is a
commit-reveal of the validators' secrets (draws wait for one), equivocation evidence is counted from the draw)."""

SOFTWARE_VERSION = "0.1.0"

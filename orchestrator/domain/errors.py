"""Domain errors. The HTTP layer maps each to one response in exactly one place (api/errors.py).

    DomainError
    ├── TransitionRefused          a state machine refused a trigger
    ├── InvalidRequest             a well-formed request a rule refuses (a note left empty, a
    │   │                          window already ended, an unknown incident impact, ...)
    │   └── InvalidOrder           the request cannot become an order (amount, rail, expiry, ...)
    ├── NotFound                   no such order / mutation / case visible to this caller
    ├── Conflict
    │   ├── IdempotencyKeyReused   same Idempotency-Key, different body
    │   ├── IdempotencyKeyInFlight same Idempotency-Key while its first request is unanswered
    │   ├── DuplicateMerchantOrder merchant_order_id already used by another order
    │   ├── AlreadyMatched         mutation or order already settled by something else
    │   └── LikelyDuplicate        a manual match of a credit whose other copy paid the order
    ├── UniqueCodesExhausted       every transfer amount in the code range is held on every account
    ├── NoPayoutAccount            merchant has no destination account for manual transfer
    ├── NotTheMerchantsAccount     a credit on one merchant's account offered for another's order
    └── StatementRejected          a bank statement file is malformed (whole file refused)
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain and services raise on purpose."""

    code = "domain_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TransitionRefused(DomainError):
    code = "transition_refused"

    def __init__(self, machine: str, state: str, trigger: str) -> None:
        super().__init__(f"{machine} in state '{state}' cannot take '{trigger}'")
        self.machine = machine
        self.state = state
        self.trigger = trigger


class InvalidRequest(DomainError):
    """Refused by a rule, not by its form; ``field`` names what to change."""

    code = "invalid_request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class InvalidOrder(InvalidRequest):
    """An order (capture, a change of payment method) refused: the code checkouts rely on."""

    code = "invalid_order"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"


class DuplicateMerchantOrder(Conflict):
    code = "duplicate_merchant_order_id"

    def __init__(self, detail: str, *, existing_order_id: str) -> None:
        super().__init__(detail)
        self.existing_order_id = existing_order_id


class AlreadyMatched(Conflict):
    code = "already_matched"


class LikelyDuplicate(Conflict):
    """A person matched a credit to an order another source's copy of the same credit had just
    paid: the money arrived once, so it is not a second payment to refund. The credit is kept
    as a likely duplicate with a case beside the order; matched again, it is taken as the
    second transfer the person says it is."""

    code = "likely_duplicate"


class UniqueCodesExhausted(DomainError):
    code = "unique_codes_exhausted"


class NoPayoutAccount(DomainError):
    code = "no_payout_account"


class NotTheMerchantsAccount(DomainError):
    """Money that landed on an account the order's merchant does not own cannot pay the order,
    not even by a person's hand: the merchant would deliver for money it never received."""

    code = "not_the_merchants_account"


class StatementRejected(DomainError):
    """A statement file that cannot be parsed whole. ``line`` is 1-based in the uploaded file."""

    code = "statement_rejected"

    def __init__(self, detail: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {detail}" if line is not None else detail)
        self.line = line
        self.reason = detail

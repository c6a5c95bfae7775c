"""Stage 6, budget: reserve the request's worst-case cost before forwarding (402 if it
does not fit), replace it by the actual cost after (always, from `finish`)."""

from __future__ import annotations

from decimal import Decimal

from gateway.budgets import Account, BudgetBook, Reservation, Shortfall
from gateway.domain import ChatRequest, Usage
from gateway.entries.openai_completions import DEFAULT_MAX_TOKENS
from gateway.entries.openai_completions import UPSTREAM_PATH as LEGACY_COMPLETIONS
from gateway.errors import PaymentRequired
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.ratelimit import input_ceiling, input_tokens
from gateway.pricing import Price, PriceTable, compute_cost, format_usd
from gateway.settings import BudgetSettings
from gateway.tokens.service import TokenService

CLAMP_HEADER = "X-AI-Cost-Gateway-Max-Tokens-Clamped"


class BudgetGuard:
    def __init__(self, book: BudgetBook, prices: PriceTable, tokens: TokenService,
                 settings: BudgetSettings) -> None:
        self._book = book
        self._prices = prices
        self._tokens = tokens
        self._settings = settings

    async def admit(self, ex: Exchange) -> None:
        assert ex.principal is not None
        project, chat = ex.principal.project, ex.chat
        if chat is None:  # no model call (a stored response read or deleted): no budget
            return
        accounts = []
        if project.monthly_budget_usd is not None:
            accounts.append(self._book.account("project", project.id, project.monthly_budget_usd))
        if project.team_id is not None and project.team_budget_usd is not None:
            accounts.append(self._book.account("team", project.team_id, project.team_budget_usd))
        if not accounts:
            return
        if chat.free:
            await self._not_spent(accounts)
            return
        # A fallback may serve the call: reserve for the dearest model of the chain.
        prices = [self._prices.resolve(chat.provider, chat.model)[0]]
        if len(ex.chain) > 1:
            prices += [self._prices.resolve(r.provider, r.upstream_model)[0]
                       for r in ex.chain[1:]]
        max_out = self._max_output(chat, prices[0])
        # Far from the limit a cheap ceiling on the input will do; near it, count exactly
        # (and when the rate limiter has counted already, its count is the one to use).
        exact = ex.input_tokens
        tokens_in = exact if exact is not None else input_ceiling(ex, self._tokens)
        price, worst = self._dearest(prices, tokens_in, max_out)
        result: Reservation | Shortfall | None = None
        if worst > 0:
            result = self._book.reserve_held(accounts, worst)
            if result is None and exact is None:  # near the limit, or a lease to confirm
                tokens_in = await input_tokens(ex, self._tokens)
                price, worst = self._dearest(prices, tokens_in, max_out)
        if worst <= 0:  # a model priced at zero (moderations)
            await self._not_spent(accounts)
            return
        if result is None:  # `reserve` takes from a held lease too, as `reserve_held` would
            result = await self._book.reserve(accounts, worst)
        if (isinstance(result, Shortfall) and self._settings.policy == "clamp"
                and _clampable(chat)):
            fitting = self._fitting_output(price, tokens_in, result.can_reserve)
            if fitting >= self._settings.clamp_min_output_tokens and fitting < max_out:
                worst = self._worst(price, tokens_in, fitting)
                result = await self._book.reserve(accounts, worst)
                if isinstance(result, Reservation):
                    _clamp(chat, fitting)
                    ex.response_headers[CLAMP_HEADER] = str(fitting)
        if isinstance(result, Shortfall):
            raise PaymentRequired(
                f"the {result.scope} budget cannot cover this request's worst case "
                f"(${format_usd(worst)}): ${format_usd(result.spent)} of "
                f"${format_usd(result.limit)} spent this month",
                details={"scope": result.scope, "current_spend": float(result.spent),
                         "budget_limit": float(result.limit),
                         "request_worst_case": float(worst),
                         "available": float(result.can_reserve)})
        ex.reservation = result

    async def _not_spent(self, accounts: list[Account]) -> None:
        """A call that costs nothing fits any budget with room, but a project whose budget
        is spent is stopped everywhere (402), free calls included."""
        spent = await self._book.exhausted(accounts)
        if spent is not None:
            raise PaymentRequired(
                f"the {spent.scope} budget is spent: ${format_usd(spent.spent)} of "
                f"${format_usd(spent.limit)} this month",
                details={"scope": spent.scope, "current_spend": float(spent.spent),
                         "budget_limit": float(spent.limit), "request_worst_case": 0.0,
                         "available": 0.0})

    async def settle(self, ex: Exchange) -> None:
        if isinstance(ex.reservation, Reservation):
            self._book.settle(ex.reservation, ex.cost if ex.forwarded else Decimal(0))

    def _max_output(self, chat: ChatRequest, price: Price) -> int:
        if chat.max_output_tokens is not None:  # 0: an answer without output (embeddings)
            return chat.max_output_tokens
        return price.max_output_tokens or self._settings.default_max_output_tokens

    def _dearest(self, prices: list[Price], tokens_in: int,
                 tokens_out: int) -> tuple[Price, Decimal]:
        """The price whose worst case is the highest, and that worst case."""
        if len(prices) == 1:
            return prices[0], self._worst(prices[0], tokens_in, tokens_out)
        return max(((p, self._worst(p, tokens_in, tokens_out)) for p in prices),
                   key=lambda pair: pair[1])

    @staticmethod
    def _worst(price: Price, tokens_in: int, tokens_out: int) -> Decimal:
        """`compute_cost` of uncached input and output (what a reservation assumes), with no
        Usage to make: it runs for every call with a budget."""
        return (tokens_in * price.input + tokens_out * price.output).scaleb(-6)

    @staticmethod
    def _fitting_output(price: Price, tokens_in: int, money: Decimal) -> int:
        left = money - compute_cost(Usage(input_tokens=tokens_in), price)
        if left <= 0 or price.output <= 0:
            return 0
        return int(left.scaleb(6) / price.output)


def _clampable(chat: ChatRequest) -> bool:
    """Whether one output limit bounds the whole answer: not so for legacy completions of
    several prompts or choices, whose `max_tokens` holds for each."""
    if chat.upstream_path != LEGACY_COMPLETIONS:
        return True
    return chat.max_output_tokens == (chat.body.get("max_tokens") or DEFAULT_MAX_TOKENS)


def _clamp(chat: ChatRequest, tokens: int) -> None:
    """Lower the output limit sent upstream, in whichever field the client used."""
    field = ("max_tokens" if "max_tokens" in chat.body or chat.upstream_path == LEGACY_COMPLETIONS
             else "max_completion_tokens")
    chat.body[field] = tokens
    chat.max_output_tokens = tokens
    if chat.native_body is not None:  # sent as it is to a provider of the client's wire
        chat.native_body = {**chat.native_body, "max_tokens": tokens}

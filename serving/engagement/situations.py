"""Situations a customer can be in that call for a message: a cart left without a purchase, a
category browsed without buying: what the journeys' entries (and the trigger rules they run)
read.

Each is ``(key, started, reason, category)``: ``key`` names this occurrence (the cart as of when
it last grew, say), so that it is acted on once; ``started`` is when it began to hold.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from features.contracts import ItemKind
from features.online.state import CustomerState
from serving.state import ServingState

Situation = tuple[str, float, str, str | None]
"""(key of this occurrence, when it started to hold, human reason, category it is about)"""


def abandoned_cart(after_minutes: float, live: CustomerState, now: datetime) -> Situation | None:
    """A cart that last grew ``after_minutes`` ago with nothing bought since."""
    if not live.cart or live.cart_updated is None:
        return None
    if now.timestamp() < live.cart_updated + after_minutes * 60:
        return None
    if live.last_purchase is not None and live.last_purchase >= live.cart_updated:
        return None  # bought since the cart last grew
    idle = (now.timestamp() - live.cart_updated) / 60
    reason = f"cart of {len(live.cart)} item(s) left {idle:.0f} minutes ago without a purchase"
    return f"{live.cart_updated:.3f}", live.cart_updated + after_minutes * 60, reason, None


def category_interest(views_needed: int, within_days: float, live: CustomerState,
                      state: ServingState, now: datetime) -> Situation | None:
    """``views_needed`` views in one top-level category within ``within_days``, with no
    purchase in it since the first of them."""
    since = now.timestamp() - within_days * 86400
    items = state.shop.items
    views: dict[str, list[float]] = {}
    for item_id, at in live.views:
        item = items.get(item_id)
        if at >= since and item is not None and item.kind == ItemKind.PRODUCT.value:
            views.setdefault(item.top, []).append(at)
    bought = Counter()
    for item_id, at in live.purchased.items():
        item = items.get(item_id)
        if item is not None:
            bought[item.top] = max(bought[item.top], at)
    for top, moments in sorted(views.items(), key=lambda kv: -len(kv[1])):
        moments = sorted(moments)
        if len(moments) < views_needed or bought.get(top, 0) >= moments[0]:
            continue
        reached = moments[views_needed - 1]  # the view that made the count
        reason = f"viewed {len(moments)} {top} products in {within_days:g} days without buying"
        return f"{top}:{reached:.3f}", reached, reason, top
    return None

# The per-client message rate of smtps (max_messages_per_client_per_minute).
from meta1lite import compat
from meta1lite.smtps.policy import RATE_WINDOW_S, RateLimiter


def test_rate_limit_over_a_sliding_minute():
    now = [1000.0]
    compat.set_clock(lambda: now[0])
    try:
        rate = RateLimiter(3)
        assert [rate.allow("cam") for _ in range(4)] == [True, True, True, False]
        assert rate.allow("nas")                   # other clients are counted apart
        now[0] += RATE_WINDOW_S / 2                # half the old minute still counts
        assert not rate.allow("cam")
        now[0] += RATE_WINDOW_S                    # the burst has slid out
        assert rate.allow("cam")
        assert RateLimiter(0).allow("anyone")      # 0: no limit
    finally:
        compat.set_clock()


def test_rate_table_stays_bounded():
    from meta1lite.smtps import policy as relaypolicy
    rate = RateLimiter(5)
    for i in range(relaypolicy.MAX_TRACKED_CLIENTS * 2):
        rate.allow("10.0.%d.%d" % (i // 256, i % 256))
    assert len(rate.windows) <= relaypolicy.MAX_TRACKED_CLIENTS

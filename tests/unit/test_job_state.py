"""The job's keyed state is declared with the TTL safety net from the config.

Flink applies the TTL; what the project owns is the declaration handed to Flink, so
these tests read the descriptors the adapters hand to Flink.
"""

from __future__ import annotations

import pytest
from pyflink.common.typeinfo import Types
from pyflink.datastream.state import StateTtlConfig

from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from jobs.functions import expiring
from pipeline.config import ConfigError, load_config


def test_state_expires_after_the_configured_time_since_its_last_write():
    descriptor = expiring(ValueStateDescriptor("contact-assembler", Types.PICKLED_BYTE_ARRAY()), 90_000)
    ttl = descriptor._ttl_config
    assert descriptor.name == "contact-assembler"
    assert ttl.is_enabled()
    assert ttl.get_ttl().to_milliseconds() == 90_000
    assert ttl.get_update_type() is StateTtlConfig.UpdateType.OnCreateAndWrite
    # NeverReturnExpired would turn PyFlink's Python state cache off (a JVM round trip per access).
    assert ttl.get_state_visibility() is StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp


def test_zero_ttl_declares_state_without_expiry():
    assert expiring(ValueStateDescriptor("contact-timer", Types.LONG()), 0)._ttl_config is None


def test_list_state_takes_the_same_ttl():
    descriptor = expiring(ListStateDescriptor("cresta-waiting-chunks", Types.PICKLED_BYTE_ARRAY()), 5_000)
    assert descriptor._ttl_config.get_ttl().to_milliseconds() == 5_000


def test_state_ttl_setting_defaults_to_hours_and_rejects_negative_values():
    assert load_config(env={})["assembler.state_ttl_ms"] == 6 * 3_600_000
    with pytest.raises(ConfigError, match="assembler.state_ttl_ms"):
        load_config(env={}, overrides={"assembler.state_ttl_ms": "-1"})

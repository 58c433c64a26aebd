"""C and Python agree on everything that crosses between them: constants, stat names, map value layouts.

Constants and enums are read from the headers' text (tests/bpf_abi.py); the
layouts from the compiled objects' BTF, so they are what clang laid out,
padding and all. Each Python twin is the one the code uses, never a copy.
"""

from __future__ import annotations

from contextlib import closing

import pytest

from dip_agent import dip_abi
from mptcp_lb import classifier
from mptcp_lb import mptcp_codec as mc
from mptcp_lb.bpf import BPF_DIR, built_object
from tests.bpf_abi import BtfObject, header_defines, header_enum

MPTCP_LB_H = BPF_DIR / "mptcp_lb.h"
DIP_STRUCTS_H = BPF_DIR / "dip_structs.h"
MUX_MAPS_H = BPF_DIR / "mux_maps.h"

# Every #define of bpf/mptcp_lb.h, and its Python twin.
SHARED_CONSTANTS = {
    "TCPOPT_EOL": mc.TCPOPT_EOL,
    "TCPOPT_NOP": mc.TCPOPT_NOP,
    "TCPOPT_TIMESTAMP": mc.TCPOPT_TIMESTAMP,
    "TCPOLEN_TIMESTAMP": mc.TIMESTAMP_LEN,
    "TCPOPT_MPTCP": mc.TCPOPT_MPTCP,
    "TCPOPT_EXPERIMENTAL": mc.TCPOPT_EXPERIMENTAL,
    "MPTCP_SUB_CAPABLE": mc.MPTCP_SUB_CAPABLE,
    "MPTCP_SUB_JOIN": mc.MPTCP_SUB_JOIN,
    "TCPOLEN_MPTCP_JOIN_SYN": mc.MP_JOIN_SYN_LEN,
    "KEY_LEN": mc.KEY_LEN,
    "KEY_CARRIER_EXID": mc.KEY_CARRIER_EXID,
    "TCPOLEN_KEY_CARRIER": mc.KEY_CARRIER_LEN,
    "TAG_PREFIX": int.from_bytes(mc.TAG_PREFIX, "big"),
    "TAG_CLASS_NONE": mc.CLASS_NONE,
    "TAG_CLASS_MP_CAPABLE": mc.CLASS_MP_CAPABLE,
    "TAG_CLASS_MP_JOIN": mc.CLASS_MP_JOIN,
    "TAG_CLASS_TIMESTAMP": mc.CLASS_TIMESTAMP,
    "TAG_VALUE_BITS": mc.TAG_VALUE_BITS,
    "IPV6_EXT_HEADERS_MAX": mc.IPV6_EXT_HEADERS_MAX,
    "IPV6_EXT_BYTES_MAX": mc.IPV6_EXT_BYTES_MAX,
    "IPV6_FRAG_OFFSET_AND_MF": mc.IPV6_FRAG_OFFSET_AND_MF,
    "SERVER_ID_BITS": mc.SERVER_ID_BITS,
    "SERVER_ID_MASK": mc.SERVER_ID_MASK,
    "KEY_MODE_NONE": dip_abi.KEY_MODE_NONE,
    "KEY_MODE_SEED": dip_abi.KEY_MODE_SEED,
    "KEY_MODE_POOL": dip_abi.KEY_MODE_POOL,
    "POOL_SIZE": dip_abi.POOL_SIZE,
    "DIP_FLAG_STAMP": dip_abi.DIP_FLAG_STAMP,
    "DIP_FLAG_REAP_TIME_WAIT": dip_abi.DIP_FLAG_REAP_TIME_WAIT,
    "SECOND_CHANCE_ADDR_OFF": mc.SECOND_CHANCE_ADDR_OFF,
    "SECOND_CHANCE_PASSED_ID": mc.SECOND_CHANCE_PASSED_ID,
    "SECOND_CHANCE_HOPS_MASK": mc.SECOND_CHANCE_HOPS_MASK,
    "SECOND_CHANCE_MAX_HOPS": mc.SECOND_CHANCE_MAX_HOPS,
}

# The #defines of bpf/dip_structs.h that user space reads or writes in map values.
DIP_VALUE_CONSTANTS = {
    "KEY_NONE": dip_abi.KEY_NONE,
    "KEY_FOR_ISN": dip_abi.KEY_FOR_ISN,
    "KEY_ANY_ISN": dip_abi.KEY_ANY_ISN,
    "MAX_VALID": dip_abi.MAX_VALID,
}

# (object, map, "value" or "key", the Python layout of that struct)
MAP_LAYOUTS = [
    ("mux_classifier.o", "mux_ports", "value", classifier.MUX_PORTS),
    ("mux_classifier.o", "mux_punt_budget", "key", classifier.PUNT_KEY),
    ("mux_classifier.o", "mux_punt_budget", "value", classifier.PUNT_BUDGET),
    ("dip_tc.o", "dip_config", "value", dip_abi.DIP_CONFIG),
    ("dip_tc.o", "dip_flows", "key", dip_abi.FLOW_KEY),
    ("dip_tc.o", "dip_flows", "value", dip_abi.FLOW_STATE),
    ("dip_tc.o", "dip_passed", "key", dip_abi.FLOW_KEY),
    ("dip_tc.o", "dip_passed", "value", dip_abi.PASSED_TO),
    ("dip_tc.o", "dip_peers", "value", dip_abi.DIP_PEER),
    ("dip_tc.o", "dip_pool", "value", dip_abi.POOL_ENTRY),
    ("dip_tc.o", "dip_pool_state", "value", dip_abi.POOL_STATE),
    ("dip_tc.o", "dip_time_wait", "key", dip_abi.FLOW_KEY),
    ("dip_tc.o", "dip_time_wait", "value", dip_abi.TIME_WAIT_DROP),
]


def stat_names(header, enum: str) -> tuple[str, ...]:
    """An enum of counters as Python names them: STAT_TO_OVS -> "to_ovs", the closing STAT_MAX left out."""
    names = header_enum(header, enum)
    assert names[-1] == "STAT_MAX", names
    return tuple(n.removeprefix("STAT_").lower() for n in names[:-1])


def test_every_shared_constant_has_a_python_twin_of_the_same_value():
    assert header_defines(MPTCP_LB_H) == SHARED_CONSTANTS


def test_flow_state_constants_match():
    defines = header_defines(DIP_STRUCTS_H, known=header_defines(MPTCP_LB_H))
    assert {name: defines.get(name) for name in DIP_VALUE_CONSTANTS} == DIP_VALUE_CONSTANTS


@pytest.mark.parametrize("header, enum, names", [
    (MUX_MAPS_H, "mux_stat", classifier.STAT_NAMES),
    (DIP_STRUCTS_H, "dip_stat", dip_abi.STAT_NAMES),
])
def test_stat_names_follow_the_enum(header, enum, names):
    assert stat_names(header, enum) == names


def test_the_time_wait_window_is_the_programs():
    from dip_agent import time_wait

    assert header_defines(BPF_DIR / "dip_maps.h")["TIME_WAIT_RETRY_NS"] == time_wait.TIME_WAIT_RETRY_NS


def test_python_limits_derive_from_the_shared_constants():
    from mptcp_lb import config_schema
    from ovs_flows import compiler

    assert config_schema.bounds("vips[].dips[]", "id") == (1, mc.SERVER_ID_MASK)
    assert config_schema.bounds("vips[]", "slice_bits") == (1, mc.MAX_SLICE_BITS)
    assert compiler.TAG_CLASS_MASK == mc.TAG_CLASS_MASK == "ff:ff:ff:00:00:00"


@pytest.mark.parametrize("obj, map_name, field, layout", [pytest.param(*row, id=f"{row[1]}.{row[2]}")
                                                          for row in MAP_LAYOUTS])
def test_map_layouts_match_the_objects_btf(obj, map_name, field, layout):
    with closing(BtfObject(built_object(obj))) as btf:
        declared = btf.map_struct(map_name, field)
    assert declared.name == layout.c_name
    assert (declared.size, declared.offsets) == (layout.size, layout.offsets())

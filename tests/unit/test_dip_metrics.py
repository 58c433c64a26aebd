from prometheus_client import CollectorRegistry, generate_latest

from dip_agent.dip_abi import STAT_NAMES
from dip_agent.metrics import DipCollector


class Programs:
    def usage(self):
        stats = {name: i for i, name in enumerate(STAT_NAMES)}
        return {**stats, "flow_entries": 900, "flow_capacity": 1024, "flows_evicted": 7, "pool_refilled": 4096,
                "time_wait_reaped": 2, "time_wait_reap_failed": 1}


def test_every_program_event_and_the_flow_table_fill_are_exported():
    registry = CollectorRegistry()
    registry.register(DipCollector(Programs(), "web", 3))
    text = generate_latest(registry).decode()
    for i, name in enumerate(STAT_NAMES):
        line = f'mptcplb_dip_program_events_total{{dip="3",event="{name}",vip="web"}} {float(i)}'
        assert (line in text) == (name != "flow_created"), name  # entries made show as entries and evictions
    assert 'mptcplb_dip_flow_entries{dip="3",vip="web"} 900.0' in text
    assert 'mptcplb_dip_flow_capacity{dip="3",vip="web"} 1024.0' in text
    assert 'mptcplb_dip_flows_evicted_total{dip="3",vip="web"} 7.0' in text
    assert 'mptcplb_dip_pool_refilled_total{dip="3",vip="web"} 4096.0' in text
    assert 'mptcplb_dip_time_wait_reaped_total{dip="3",vip="web"} 2.0' in text
    assert 'mptcplb_dip_time_wait_reap_failed_total{dip="3",vip="web"} 1.0' in text

"""OVS's OXM fields for IPv6 neighbour discovery that os-ken does not know, registered with its OpenFlow 1.3.

Answering a neighbour solicitation by flows (``compiler.nd_responder``) turns
it into an advertisement in place: its reserved field becomes the Solicited
and Override flags, and its option's type becomes "target link-layer
address". OVS 2.11 and later carry those two as ``nd_reserved`` and
``nd_options_type``, in OXM class 0x1000 (ERICOXM_OF; OVS's
meta-flow.h). os-ken has neither, so a set_field of them could not be built,
nor parsed back from a flow dump. ``register()`` adds both to os-ken's OXM
table for OpenFlow 1.3 (idempotent); importing ``ovs_flows.compiler`` does it.
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3, oxm_fields
from os_ken.lib import type_desc

OFPXMC_ERICOXM = 0x1000
ND_RESERVED = "nd_reserved"  # 32 bits: R, S, O flags and reserved
ND_OPTIONS_TYPE = "nd_options_type"  # 8 bits: the first option's type

__all__ = ["register", "ND_RESERVED", "ND_OPTIONS_TYPE", "OFPXMC_ERICOXM"]


class EricssonOxm(oxm_fields._OxmClass):
    """32-bit OXM headers of class 0x1000, formatted like OpenFlow basic ones."""

    _class = OFPXMC_ERICOXM


def register() -> None:
    """Add nd_reserved (1) and nd_options_type (2) to os-ken's OpenFlow 1.3 fields, once."""
    names = {f.name for f in ofproto_v1_3.oxm_types}
    if ND_RESERVED in names:
        return
    ofproto_v1_3.oxm_types += [EricssonOxm(ND_RESERVED, 1, type_desc.Int4),
                               EricssonOxm(ND_OPTIONS_TYPE, 2, type_desc.Int1)]
    oxm_fields.generate(ofproto_v1_3.__name__)


register()

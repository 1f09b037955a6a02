"""DeliverySettings: the node's name and the lease's duration (the other fields are plain data)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest

from mailman.services.delivery.context import DeliverySettings, default_node_name


class TestNodeName:
    def test_the_default_names_the_host_and_the_process(self) -> None:
        """Unset, a node is named ``<hostname>-<pid>-<random>``: readable, and unique per daemon."""
        name = DeliverySettings().node_name

        assert name.startswith(f"{socket.gethostname()}-{os.getpid()}-")

    def test_two_defaults_differ_even_in_one_process(self) -> None:
        """The random part tells apart two nodes sharing a host and a pid (containers)."""
        assert default_node_name() != default_node_name()

    @pytest.mark.parametrize("name", ["", "   "])
    def test_an_empty_name_is_refused(self, name: str) -> None:
        """A node must have a name: it is what holds its letters' leases."""
        with pytest.raises(ValueError, match="expected node_name to be a non-empty string"):
            DeliverySettings(node_name=name)


class TestLeaseTtl:
    def test_the_duration_is_the_ttl(self) -> None:
        """The lease queries take the ttl as a timedelta."""
        assert DeliverySettings(lease_ttl=2.5).lease_duration == timedelta(seconds=2.5)

    @pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan")])
    def test_a_ttl_that_is_not_positive_is_refused(self, ttl: float) -> None:
        """A lease must last some time."""
        with pytest.raises(ValueError, match="expected lease_ttl > 0 seconds"):
            DeliverySettings(lease_ttl=ttl)

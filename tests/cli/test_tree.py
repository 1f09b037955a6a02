"""Drawing the supervision tree (``mailman tree``) from the ``system.tree`` document."""

from __future__ import annotations

from mailman.cli.tree import describe_node, render_tree

SAMPLE = {
    "id": "application",
    "name": "mailman.application",
    "pid": "<0.1.0>",
    "type": "supervisor",
    "strategy": "rest_for_one",
    "restarts": 1,
    "max_restarts": 3,
    "max_seconds": 5,
    "children": [
        {"id": "repo", "module": "Repo", "name": "mailman.repo", "pid": "<0.2.0>", "type": "worker"},
        {"id": "mailman.letters", "name": "mailman.letters", "pid": "<0.3.0>", "type": "worker"},
        {
            "id": "letter_delivery_dispatcher",
            "name": "mailman.dispatcher",
            "pid": "<0.6.0>",
            "type": "supervisor",
            "strategy": "one_for_one",
            "restarts": 0,
            "max_restarts": 3,
            "max_seconds": 5,
            "children": [
                {
                    "id": "LetterSupervisor 42",
                    "module": "LetterSupervisor",
                    "name": None,
                    "pid": "<0.10.0>",
                    "type": "supervisor",
                    "strategy": "one_for_one",
                    "restarts": 2,
                    "max_restarts": 6,
                    "max_seconds": 3600,
                    "children": [
                        {
                            "id": "LetterDeliveryService 42",
                            "module": "LetterDeliveryService",
                            "name": None,
                            "pid": "<0.11.0>",
                            "type": "worker",
                        }
                    ],
                },
                {"id": "child <0.12.0>", "name": None, "pid": None, "type": "supervisor"},
            ],
        },
        {"id": "rpc_server", "name": "mailman.rpc", "pid": "<0.8.0>", "type": "worker"},
    ],
}


class TestRenderTree:
    def test_draws_the_whole_tree_with_box_characters(self) -> None:
        """Each node on its line under its parent: what it runs, names, pids, strategies, restarts of
        intensity; a letter's processes by what they run and the letter's id."""
        assert render_tree(SAMPLE).splitlines() == [
            "application  mailman.application  <0.1.0>  supervisor rest_for_one · restarts 1/3 in 5s",
            "├── repo  Repo  mailman.repo  <0.2.0>  worker",
            "├── mailman.letters  <0.3.0>  worker",
            "├── letter_delivery_dispatcher  mailman.dispatcher  <0.6.0>  supervisor one_for_one"
            " · restarts 0/3 in 5s",
            "│   ├── LetterSupervisor 42  <0.10.0>  supervisor one_for_one · restarts 2/6 in 3600s",
            "│   │   └── LetterDeliveryService 42  <0.11.0>  worker",
            "│   └── child <0.12.0>  (not running)  supervisor",
            "└── rpc_server  mailman.rpc  <0.8.0>  worker",
        ]

    def test_a_lone_worker(self) -> None:
        """A tree of one node is one line."""
        assert (
            render_tree({"id": "x", "name": None, "pid": "<0.5.0>", "type": "worker"}) == "x  <0.5.0>  worker"
        )


class TestDescribeNode:
    def test_what_a_child_runs_follows_its_id_unless_the_id_says_it(self) -> None:
        """The module (the child spec's ``modules``) is shown after the id, once."""
        assert (
            describe_node({"id": "repo", "module": "Repo", "pid": "<0.2.0>"}) == "repo  Repo  <0.2.0>  worker"
        )
        assert describe_node(
            {"id": "LetterSupervisor 7", "module": "LetterSupervisor", "pid": "<0.9.0>"}
        ) == ("LetterSupervisor 7  <0.9.0>  worker")

    def test_a_name_equal_to_the_id_is_not_repeated(self) -> None:
        """The Registry's id is its name: shown once."""
        assert describe_node({"id": "mailman.letters", "name": "mailman.letters", "pid": "<0.3.0>"}) == (
            "mailman.letters  <0.3.0>  worker"
        )

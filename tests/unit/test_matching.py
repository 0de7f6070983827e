"""Which targets a pod may go to: its nodeSelector, node affinity and tolerations judged against a
target's labels and taints with Kubernetes' rules, on the label keys targets declare only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from interlink_slurm.errors import describe_validation_error
from interlink_slurm.translate.matching import label_mismatch, preference, untolerated
from interlink_slurm.wire import PodSpec, RetrievedPodData, Taint
from tests import podgen

ACCEL = "interlink.eu/accelerator"
REGION = "topology.kubernetes.io/region"
CORES = "interlink.eu/cores"
# The label keys the configured targets declare; anything else selects the virtual node.
KEYS = frozenset({ACCEL, REGION, CORES})
A100_BOLOGNA = {ACCEL: "a100", REGION: "bologna", CORES: "64"}
REQUIRED = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"


def spec(**fields: Any) -> PodSpec:
    """A pod spec as it comes off the wire (camelCase)."""
    return PodSpec.model_validate({"containers": [{"name": "main", "image": "alpine"}], **fields})


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


def term(
    *expressions: dict[str, Any], fields: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    t: dict[str, Any] = {"matchExpressions": list(expressions)}
    if fields is not None:
        t["matchFields"] = fields
    return t


def required(*terms: dict[str, Any]) -> PodSpec:
    node_affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    return spec(affinity={"nodeAffinity": node_affinity})


def preferred(*weighted: tuple[int, dict[str, Any]]) -> PodSpec:
    terms = [{"weight": w, "preference": t} for w, t in weighted]
    return spec(
        affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}
    )


def tolerating(*tolerations: dict[str, Any]) -> PodSpec:
    return spec(tolerations=list(tolerations))


# --- nodeSelector -------------------------------------------------------------------------------


def test_a_pod_without_selectors_fits_any_target() -> None:
    assert label_mismatch(spec(), A100_BOLOGNA, KEYS) is None
    assert label_mismatch(spec(), {}, KEYS) is None


def test_node_selector_satisfied_by_the_target_labels() -> None:
    pod = spec(nodeSelector={ACCEL: "a100", REGION: "bologna"})
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is None


def test_node_selector_wanting_another_value_names_both_values() -> None:
    pod = spec(nodeSelector={ACCEL: "h100"})
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) == (
        f"spec.nodeSelector[{ACCEL}]: the pod wants 'h100', this target has 'a100'"
    )


def test_node_selector_on_a_label_the_target_lacks() -> None:
    pod = spec(nodeSelector={ACCEL: "a100"})
    assert label_mismatch(pod, {REGION: "bologna"}, KEYS) == (
        f"spec.nodeSelector[{ACCEL}]: the pod wants 'a100', this target has no such label"
    )


def test_node_selector_entries_are_anded_and_the_first_failing_is_named() -> None:
    pod = spec(nodeSelector={ACCEL: "a100", REGION: "catania"})
    why = label_mismatch(pod, A100_BOLOGNA, KEYS)
    assert why == f"spec.nodeSelector[{REGION}]: the pod wants 'catania', this target has 'bologna'"


def test_node_selector_on_the_virtual_node_labels_is_ignored() -> None:
    pod = spec(nodeSelector={"type": "virtual-kubelet", "kubernetes.io/hostname": "vk"})
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is None


def test_only_the_declared_keys_are_judged() -> None:
    pod = spec(nodeSelector={ACCEL: "h100"})
    assert label_mismatch(pod, A100_BOLOGNA, keys={REGION}) is None
    assert label_mismatch(pod, A100_BOLOGNA, keys=()) is None


def test_node_selector_is_judged_before_affinity() -> None:
    pod = spec(
        nodeSelector={ACCEL: "h100"},
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [term(expr(REGION, "In", "catania"))]
                }
            }
        },
    )
    why = label_mismatch(pod, A100_BOLOGNA, KEYS)
    assert why is not None and why.startswith("spec.nodeSelector[")


# --- required node affinity: operators ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "labels", "why"),
    [
        (expr(ACCEL, "In", "a100", "h100"), {ACCEL: "a100"}, None),
        (expr(ACCEL, "In", "h100"), {ACCEL: "a100"}, "this target has 'a100'"),
        (expr(ACCEL, "In", "h100"), {}, "this target has no such label"),
        (expr(ACCEL, "NotIn", "h100"), {ACCEL: "a100"}, None),
        (expr(ACCEL, "NotIn", "h100"), {}, None),
        (expr(ACCEL, "NotIn", "a100", "h100"), {ACCEL: "a100"}, "this target has 'a100'"),
        (expr(ACCEL, "Exists"), {ACCEL: "a100"}, None),
        (expr(ACCEL, "Exists"), {ACCEL: ""}, None),
        (expr(ACCEL, "Exists"), {}, "this target has no such label"),
        (expr(ACCEL, "DoesNotExist"), {}, None),
        (expr(ACCEL, "DoesNotExist"), {ACCEL: "a100"}, "this target has 'a100'"),
        (expr(CORES, "Gt", "32"), {CORES: "64"}, None),
        (expr(CORES, "Gt", "64"), {CORES: "64"}, "this target has '64'"),
        (expr(CORES, "Gt", "-1"), {CORES: "+0"}, None),
        (expr(CORES, "Lt", "128"), {CORES: "64"}, None),
        (expr(CORES, "Lt", "64"), {CORES: "64"}, "this target has '64'"),
        (expr(CORES, "Gt", "32"), {}, "this target has no such label"),
        (expr(CORES, "Lt", "32"), {}, "this target has no such label"),
        (expr(CORES, "Gt", "32"), {CORES: "many"}, "this target has 'many', not an integer"),
        (expr(CORES, "Lt", "32"), {CORES: "6.5"}, "this target has '6.5', not an integer"),
        (expr(CORES, "Gt", "32"), {CORES: " 64"}, "this target has ' 64', not an integer"),
        (expr(CORES, "Gt", "32"), {CORES: "6_4"}, "this target has '6_4', not an integer"),
        (
            expr(CORES, "Gt", "0"),
            {CORES: "9" * 30},
            f"this target has '{'9' * 30}', not an integer",
        ),
        (expr(CORES, "Gt", "lots"), {CORES: "64"}, "Gt needs exactly one integer value"),
        (expr(CORES, "Lt", "1", "2"), {CORES: "0"}, "Lt needs exactly one integer value"),
        (expr(CORES, "Gt"), {CORES: "64"}, "Gt needs exactly one integer value"),
        (expr(ACCEL, "Equals", "a100"), {ACCEL: "a100"}, "unknown operator 'Equals'"),
        (expr(ACCEL, "in", "a100"), {ACCEL: "a100"}, "unknown operator 'in'"),
    ],
)
def test_required_affinity_operator(
    expression: dict[str, Any], labels: dict[str, str], why: str | None
) -> None:
    result = label_mismatch(required(term(expression)), labels, KEYS)
    if why is None:
        assert result is None
    else:
        assert result is not None
        assert result.startswith(f"{REQUIRED}: no nodeSelectorTerms entry matches (term 0: ")
        assert result.endswith(f": {why})")


def test_required_affinity_message_names_the_expression_and_the_target_value() -> None:
    pod = required(term(expr(ACCEL, "In", "h100")))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 0: {ACCEL} In [h100]: this target has 'a100')"
    )


def test_exists_and_does_not_exist_are_written_without_values() -> None:
    why = label_mismatch(required(term(expr(ACCEL, "DoesNotExist"))), A100_BOLOGNA, KEYS)
    assert why == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 0: {ACCEL} DoesNotExist: this target has 'a100')"
    )


def test_unknown_operator_is_named_in_the_message() -> None:
    why = label_mismatch(required(term(expr(ACCEL, "Like", "a*"))), A100_BOLOGNA, KEYS)
    assert why == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 0: {ACCEL} Like [a*]: unknown operator 'Like')"
    )


# --- required node affinity: terms -------------------------------------------------------------


def test_expressions_within_a_term_are_anded_and_the_first_failing_is_named() -> None:
    pod = required(
        term(expr(ACCEL, "In", "a100"), expr(REGION, "In", "catania"), expr(CORES, "Gt", "999"))
    )
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 0: {REGION} In [catania]: this target has 'bologna')"
    )


def test_terms_are_ored() -> None:
    pod = required(term(expr(ACCEL, "In", "h100")), term(expr(REGION, "In", "bologna")))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is None


def test_every_failing_term_is_described() -> None:
    pod = required(term(expr(ACCEL, "In", "h100")), term(expr(REGION, "NotIn", "bologna")))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 0: {ACCEL} In [h100]: this target has 'a100'; "
        f"term 1: {REGION} NotIn [bologna]: this target has 'bologna')"
    )


def test_many_failing_terms_are_summarised() -> None:
    pod = required(*(term(expr(ACCEL, "In", f"gpu{i}")) for i in range(5)))
    why = label_mismatch(pod, A100_BOLOGNA, KEYS)
    assert why is not None
    assert "term 2: " in why and "term 3: " not in why
    assert why.endswith("; and 2 more)")


def test_a_term_on_the_virtual_node_labels_only_matches() -> None:
    pod = required(
        term(expr(ACCEL, "In", "h100")),
        term(expr("type", "In", "virtual-kubelet"), expr("kubernetes.io/hostname", "Exists")),
    )
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is None


def test_unjudged_expressions_in_a_term_count_as_satisfied() -> None:
    pod = required(term(expr("type", "In", "something-else"), expr(ACCEL, "In", "a100")))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is None


def test_match_fields_concern_the_virtual_node_and_are_ignored() -> None:
    on_name = [expr("metadata.name", "In", "some-other-node")]
    assert label_mismatch(required(term(fields=on_name)), A100_BOLOGNA, KEYS) is None
    pod = required(term(expr(ACCEL, "In", "h100"), fields=on_name))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) is not None


def test_an_empty_terms_list_reached_us_so_is_satisfied() -> None:
    assert label_mismatch(required(), A100_BOLOGNA, KEYS) is None
    no_terms = spec(
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    )
    assert label_mismatch(no_terms, A100_BOLOGNA, KEYS) is None


def test_an_empty_term_matches_nothing_as_in_kubernetes() -> None:
    # Kubernetes skips an empty term; the pod was scheduled through another one.
    pod = required({}, term(expr(ACCEL, "In", "h100")))
    assert label_mismatch(pod, A100_BOLOGNA, KEYS) == (
        f"{REQUIRED}: no nodeSelectorTerms entry matches "
        f"(term 1: {ACCEL} In [h100]: this target has 'a100')"
    )
    assert label_mismatch(required({}), A100_BOLOGNA, KEYS) is None


def test_affinity_without_node_affinity_or_with_only_preferences_does_not_exclude() -> None:
    pod_affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}
    assert label_mismatch(spec(affinity=pod_affinity), A100_BOLOGNA, KEYS) is None
    assert label_mismatch(spec(affinity={"nodeAffinity": {}}), A100_BOLOGNA, KEYS) is None
    only_preferred = preferred((50, term(expr(ACCEL, "In", "h100"))))
    assert label_mismatch(only_preferred, A100_BOLOGNA, KEYS) is None


# --- preferred node affinity --------------------------------------------------------------------


def test_preference_sums_the_weights_of_matching_terms() -> None:
    pod = preferred(
        (40, term(expr(ACCEL, "In", "a100"))),
        (25, term(expr(REGION, "In", "bologna"), expr(CORES, "Gt", "16"))),
        (30, term(expr(ACCEL, "In", "h100"))),
    )
    assert preference(pod, A100_BOLOGNA, KEYS) == 65
    assert preference(pod, {ACCEL: "h100"}, KEYS) == 30
    assert preference(pod, {}, KEYS) == 0


def test_preference_without_affinity_is_zero() -> None:
    assert preference(spec(), A100_BOLOGNA, KEYS) == 0
    assert preference(required(term(expr(ACCEL, "In", "a100"))), A100_BOLOGNA, KEYS) == 0


def test_a_preferred_term_on_no_judged_key_says_nothing_about_targets() -> None:
    pod = preferred(
        (10, term(expr("type", "In", "virtual-kubelet"))),
        (20, term(fields=[expr("metadata.name", "In", "vk")])),
        (30, {}),
        (40, term(expr(ACCEL, "Exists"))),
    )
    assert preference(pod, A100_BOLOGNA, KEYS) == 40
    assert preference(pod, {}, KEYS) == 0
    assert preference(pod, A100_BOLOGNA, keys=()) == 0


def test_a_preferred_term_mixing_judged_and_unjudged_keys_is_judged_on_its_judged_keys() -> None:
    pod = preferred((7, term(expr("type", "In", "nope"), expr(REGION, "NotIn", "catania"))))
    assert preference(pod, A100_BOLOGNA, KEYS) == 7


def test_preferred_terms_use_the_same_operator_rules() -> None:
    pod = preferred(
        (1, term(expr(CORES, "Gt", "lots"))),
        (2, term(expr(ACCEL, "Like", "a*"))),
        (4, term(expr(REGION, "DoesNotExist"))),
        (8, term(expr(CORES, "Lt", "100"))),
    )
    assert preference(pod, A100_BOLOGNA, KEYS) == 8
    assert preference(pod, {CORES: "200"}, KEYS) == 4


# --- taints and tolerations ---------------------------------------------------------------------

GPU_ONLY = Taint(key="dedicated", value="gpu", effect="NoSchedule")


def test_a_target_without_taints_takes_any_pod() -> None:
    assert untolerated(spec(), []) is None


def test_an_untolerated_taint_is_named() -> None:
    assert untolerated(spec(), [GPU_ONLY]) == (
        "this target has taint dedicated=gpu:NoSchedule, which spec.tolerations does not tolerate"
    )


def test_a_taint_without_a_value_is_written_key_colon_effect() -> None:
    taint = Taint(key="maintenance", effect="NoExecute")
    assert untolerated(spec(), [taint]) == (
        "this target has taint maintenance:NoExecute, which spec.tolerations does not tolerate"
    )


def test_the_first_untolerated_taint_is_named() -> None:
    taints = [GPU_ONLY, Taint(key="site", value="cineca", effect="NoExecute")]
    pod = tolerating({"key": "dedicated", "operator": "Equal", "value": "gpu"})
    why = untolerated(pod, taints)
    assert why is not None and "site=cineca:NoExecute" in why


def test_prefer_no_schedule_never_excludes() -> None:
    assert untolerated(spec(), [Taint(key="slow", value="yes", effect="PreferNoSchedule")]) is None


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, True),
        ({"key": "dedicated", "value": "gpu"}, True),  # operator defaults to Equal
        ({"key": "dedicated", "operator": "", "value": "gpu"}, True),
        ({"key": "dedicated", "operator": "Equal", "value": "cpu"}, False),
        ({"key": "dedicated", "operator": "Equal"}, False),
        ({"key": "other", "operator": "Equal", "value": "gpu"}, False),
        ({"operator": "Equal", "value": "gpu"}, False),
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "other", "operator": "Exists"}, False),
        ({"operator": "Exists"}, True),  # empty key: every taint
        ({"operator": "Exists", "effect": "NoSchedule"}, True),
        ({"operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "dedicated", "value": "gpu", "effect": "PreferNoSchedule"}, False),
        ({"key": "dedicated", "operator": "Matches", "value": "gpu"}, False),
        ({"key": "dedicated", "operator": "exists"}, False),
    ],
)
def test_toleration_matching(toleration: dict[str, Any], tolerated: bool) -> None:
    assert (untolerated(tolerating(toleration), [GPU_ONLY]) is None) is tolerated


def test_a_no_execute_taint_tolerated_for_a_while_is_tolerated() -> None:
    taint = Taint(key="node.kubernetes.io/unreachable", effect="NoExecute")
    pod = tolerating(
        {"key": taint.key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    )
    assert untolerated(pod, [taint]) is None


def test_every_excluding_taint_must_be_tolerated() -> None:
    taints = [GPU_ONLY, Taint(key="site", value="cineca", effect="NoExecute")]
    both = tolerating({"key": "dedicated", "value": "gpu"}, {"key": "site", "operator": "Exists"})
    assert untolerated(both, taints) is None
    assert untolerated(tolerating({"operator": "Exists"}), taints) is None


# --- parsing ------------------------------------------------------------------------------------


def _gpu_pod(**spec_fields: Any) -> dict[str, Any]:
    return podgen.retrieved(
        podgen.pod("train", [podgen.container("main", "print(1)")], **spec_fields)
    )


def test_a_realistic_pod_parses_with_tolerations_and_affinity() -> None:
    data = _gpu_pod(
        nodeSelector={"type": "virtual-kubelet", ACCEL: "a100"},
        tolerations=[
            {"key": "virtual-node.interlink/no-schedule", "operator": "Exists"},
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        ],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": REGION, "operator": "In", "values": ["bologna", "pisa"]},
                                {"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
                            ],
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["vk"]}
                            ],
                        }
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 80,
                        "preference": {
                            "matchExpressions": [{"key": CORES, "operator": "Gt", "values": ["32"]}]
                        },
                    }
                ],
            },
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app": "train"}},
                        },
                    }
                ]
            },
        },
    )
    pod_spec = RetrievedPodData.model_validate(data).pod.spec

    assert [(t.key, t.operator, t.value, t.effect) for t in pod_spec.tolerations] == [
        ("virtual-node.interlink/no-schedule", "Exists", "", ""),
        ("node.kubernetes.io/not-ready", "Exists", "", "NoExecute"),
        ("dedicated", "Equal", "gpu", "NoSchedule"),
    ]
    assert pod_spec.tolerations[1].toleration_seconds == 300
    assert pod_spec.affinity is not None
    node_affinity = pod_spec.affinity.node_affinity
    assert node_affinity is not None
    req = node_affinity.required_during_scheduling_ignored_during_execution
    assert req is not None
    (only,) = req.node_selector_terms
    assert [(e.key, e.operator, e.values) for e in only.match_expressions] == [
        (REGION, "In", ["bologna", "pisa"]),
        ("type", "In", ["virtual-kubelet"]),
    ]
    assert [f.key for f in only.match_fields] == ["metadata.name"]
    (pref,) = node_affinity.preferred_during_scheduling_ignored_during_execution
    assert pref.weight == 80 and pref.preference.match_expressions[0].values == ["32"]
    assert "podAntiAffinity" in (pod_spec.affinity.model_extra or {})

    assert label_mismatch(pod_spec, A100_BOLOGNA, KEYS) is None
    assert preference(pod_spec, A100_BOLOGNA, KEYS) == 80
    assert untolerated(pod_spec, [GPU_ONLY]) is None
    why = label_mismatch(pod_spec, {ACCEL: "a100", REGION: "catania"}, KEYS)
    assert why is not None and "bologna, pisa" in why


def test_the_pod_dumps_back_in_kubernetes_camel_case() -> None:
    data = _gpu_pod(
        tolerations=[{"key": "k", "operator": "Exists", "tolerationSeconds": 5}],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [expr(ACCEL, "Exists")]}]
                }
            }
        },
    )
    dumped = RetrievedPodData.model_validate(data).model_dump(by_alias=True, exclude_none=True)
    pod_spec = dumped["pod"]["spec"]
    assert pod_spec["tolerations"][0]["tolerationSeconds"] == 5
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == ACCEL
    assert terms["nodeSelectorTerms"][0]["matchFields"] == []


def test_null_lists_in_tolerations_and_affinity_read_as_empty() -> None:
    pod_spec = spec(
        tolerations=None,
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [expr(ACCEL, "Exists") | {"values": None}]},
                        {"matchExpressions": None, "matchFields": None},
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": None,
            }
        },
    )
    assert pod_spec.tolerations == []
    assert pod_spec.affinity is not None and pod_spec.affinity.node_affinity is not None
    node_affinity = pod_spec.affinity.node_affinity
    assert node_affinity.preferred_during_scheduling_ignored_during_execution == []
    req = node_affinity.required_during_scheduling_ignored_during_execution
    assert req is not None
    assert req.node_selector_terms[0].match_expressions[0].values == []
    assert req.node_selector_terms[1].match_expressions == []
    assert spec(affinity=None).affinity is None


def test_the_fixtures_tolerations_parse() -> None:
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    data = RetrievedPodData.model_validate_json((fixtures / "create_gpu.json").read_text())
    assert {t.key for t in data.pod.spec.tolerations} >= {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    }
    assert untolerated(data.pod.spec, [GPU_ONLY]) is not None


@pytest.mark.parametrize(
    ("spec_fields", "where"),
    [
        ({"tolerations": [5]}, "pod.spec.tolerations.0"),
        ({"tolerations": {"key": "a"}}, "pod.spec.tolerations"),
        (
            {"tolerations": [{"key": "a", "tolerationSeconds": "soon"}]},
            "pod.spec.tolerations.0.tolerationSeconds",
        ),
        ({"affinity": 5}, "pod.spec.affinity"),
        ({"affinity": {"nodeAffinity": []}}, "pod.spec.affinity.nodeAffinity"),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{"key": ACCEL}]}]
                        }
                    }
                }
            },
            "pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms.0.matchExpressions.0.operator",
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": "heavy", "preference": {}}
                        ]
                    }
                }
            },
            "pod.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.0"
            ".weight",
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [expr(ACCEL, "In") | {"values": [1]}]}
                            ]
                        }
                    }
                }
            },
            "pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms.0.matchExpressions.0.values.0",
        ),
    ],
)
def test_malformed_tolerations_or_affinity_are_a_validation_error_naming_the_field(
    spec_fields: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        RetrievedPodData.model_validate(_gpu_pod(**spec_fields))
    assert describe_validation_error(caught.value).startswith(f"{where}: ")


def test_the_api_refuses_malformed_tolerations_naming_the_field(tmp_path: Path) -> None:
    from tests.unit.test_api import Harness

    api = Harness(tmp_path)
    try:
        r = api.post("/create", _gpu_pod(tolerations=[5]))
    finally:
        api.close()
    assert r.status_code == 400, r.text
    assert "pod.spec.tolerations.0" in r.text
    assert api.scheduler.calls == []


def test_an_unknown_toleration_operator_is_kept_not_refused() -> None:
    pod_spec = tolerating({"key": "dedicated", "operator": "Matches", "value": "gpu"})
    assert pod_spec.tolerations[0].operator == "Matches"


# --- properties ---------------------------------------------------------------------------------

_keys = st.sampled_from([ACCEL, REGION, CORES, "type", ""])
_values = st.sampled_from(["a100", "h100", "", "64", "-3", "x", "99999999999999999999999"])
_operators = st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Eq", ""])
_requirement = st.fixed_dictionaries(
    {"key": _keys, "operator": _operators},
    optional={"values": st.one_of(st.none(), st.lists(_values, max_size=3))},
)
_term = st.fixed_dictionaries(
    {},
    optional={
        "matchExpressions": st.one_of(st.none(), st.lists(_requirement, max_size=3)),
        "matchFields": st.one_of(st.none(), st.lists(_requirement, max_size=1)),
    },
)
_node_affinity = st.fixed_dictionaries(
    {},
    optional={
        "requiredDuringSchedulingIgnoredDuringExecution": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={"nodeSelectorTerms": st.one_of(st.none(), st.lists(_term, max_size=3))},
            ),
        ),
        "preferredDuringSchedulingIgnoredDuringExecution": st.one_of(
            st.none(),
            st.lists(
                st.fixed_dictionaries({"weight": st.integers(-5, 100), "preference": _term}),
                max_size=3,
            ),
        ),
    },
)
_toleration = st.fixed_dictionaries(
    {},
    optional={
        "key": _keys,
        "operator": st.sampled_from(["Equal", "Exists", "", "Other"]),
        "value": _values,
        "effect": st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute", "Bogus"]),
        "tolerationSeconds": st.one_of(st.none(), st.integers(0, 600)),
    },
)
_spec = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": st.one_of(st.none(), st.dictionaries(_keys, _values, max_size=3)),
        "tolerations": st.one_of(st.none(), st.lists(_toleration, max_size=3)),
        "affinity": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {}, optional={"nodeAffinity": st.one_of(st.none(), _node_affinity)}
            ),
        ),
    },
)
_labels = st.dictionaries(_keys, _values, max_size=4)
_taints = st.lists(
    st.builds(
        Taint,
        key=_keys,
        value=_values,
        effect=st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    ),
    max_size=3,
)


@given(fields=_spec, labels=_labels, keys=st.frozensets(_keys), taints=_taints)
@settings(max_examples=300, deadline=None)
def test_matching_never_raises_on_a_well_formed_spec(
    fields: dict[str, Any], labels: dict[str, str], keys: frozenset[str], taints: list[Taint]
) -> None:
    pod_spec = spec(**fields)
    why = label_mismatch(pod_spec, labels, keys)
    assert why is None or (why.startswith("spec.") and "\n" not in why)
    assert isinstance(preference(pod_spec, labels, keys), int)
    not_tolerated = untolerated(pod_spec, taints)
    assert not_tolerated is None or not_tolerated.startswith("this target has taint ")


@given(fields=_spec, labels=_labels)
@settings(max_examples=100, deadline=None)
def test_with_no_declared_keys_every_target_fits(
    fields: dict[str, Any], labels: dict[str, str]
) -> None:
    pod_spec = spec(**fields)
    assert label_mismatch(pod_spec, labels, ()) is None
    assert preference(pod_spec, labels, ()) == 0


@given(fields=_spec, taints=_taints)
@settings(max_examples=100, deadline=None)
def test_tolerating_everything_tolerates_every_taint(
    fields: dict[str, Any], taints: list[Taint]
) -> None:
    pod_spec = spec(**fields)
    pod_spec.tolerations.append(spec(tolerations=[{"operator": "Exists"}]).tolerations[0])
    assert untolerated(pod_spec, taints) is None

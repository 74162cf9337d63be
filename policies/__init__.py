"""Policy model, appraisal and release decisions (claims -> verdict with coded reasons).

Pure: nothing here reads the clock or the network; ``load_policy``/``load_default`` read one file.
"""

from policies.appraise import Appraisal, appraise
from policies.codec import claims_from_dict, nodes_from_json, nodes_from_list
from policies.errors import Code, PolicyError, Reason
from policies.loader import load_default, load_policy, parse_policy
from policies.model import NodeState, Policy, Purpose, Verdict
from policies.reappraise import Change, reappraise, reappraise_one
from policies.release import ReleaseDecision, decide_release
from policies.summary import summarize

__all__ = [
    "Appraisal",
    "Change",
    "Code",
    "NodeState",
    "Policy",
    "PolicyError",
    "Purpose",
    "Reason",
    "ReleaseDecision",
    "Verdict",
    "appraise",
    "claims_from_dict",
    "decide_release",
    "load_default",
    "load_policy",
    "nodes_from_json",
    "nodes_from_list",
    "parse_policy",
    "reappraise",
    "reappraise_one",
    "summarize",
]

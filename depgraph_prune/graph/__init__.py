"""Step 2 of the pipeline: the channel-dependency graph and its groups."""
from .dependency_graph import DependencyGraph
from .groups import Group, GroupMember
from .registry import FUNCTION_RULES, METHOD_RULES, MODULE_RULES

__all__ = ["DependencyGraph", "Group", "GroupMember", "FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES"]

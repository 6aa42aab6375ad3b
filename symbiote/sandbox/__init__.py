"""Where commands run: isolated backends, their profiles, results and workspaces.

This subpackage depends on nothing of symbiote but :mod:`symbiote.errors`.
A backend that cannot give the requested isolation raises
:class:`~symbiote.errors.SandboxUnavailable`; nothing ever runs unsandboxed.
"""

from symbiote.sandbox.base import Sandbox, SandboxResult, Workspaces
from symbiote.sandbox.bwrap import BubblewrapSandbox
from symbiote.sandbox.oci import OciSandbox
from symbiote.sandbox.profile import SandboxProfile

__all__ = ["BubblewrapSandbox", "OciSandbox", "Sandbox", "SandboxProfile", "SandboxResult", "Workspaces"]

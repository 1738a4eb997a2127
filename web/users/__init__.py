"""The caller's own account, and admins' management of everyone's."""

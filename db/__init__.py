"""Models, the unit of work, migrations and the domain operations shared by web and workers."""

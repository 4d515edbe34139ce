"""The runtime: trio actors that own the domain objects of `openprod/` and talk over channels."""

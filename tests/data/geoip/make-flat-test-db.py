#!/usr/bin/env python3
"""Writes DBIP-Country-Lite-Test.mmdb: the flat `country_code` layout of DB-IP's lite
databases, with three made-up networks. Needs `pip install mmdb-writer netaddr`."""
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

writer = MMDBWriter(
    ip_version=6,
    database_type="DBIP-Country-Lite",
    languages=["en"],
    description={"en": "qrpool test: flat country_code layout"},
    ipv4_compatible=True,
)
writer.insert_network(IPSet(["81.2.69.0/24"]), {"country_code": "GB"})
writer.insert_network(IPSet(["89.160.20.0/24"]), {"country_code": "SE"})
writer.insert_network(IPSet(["2001:db8::/32"]), {"country_code": "DE"})
writer.to_db_file(str(Path(__file__).with_name("DBIP-Country-Lite-Test.mmdb")))

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from temps_shared.tls import create_ca, issue_server_certificate


def test_server_certificate_is_signed_by_the_ca_with_the_right_names() -> None:
    ca = create_ca()
    issued = issue_server_certificate(ca, ["temps-postgres-db1", "localhost"], ["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["temps-postgres-db1", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert issued.ca_pem == ca.cert_pem

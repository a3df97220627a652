"""The broker's TLS listener as a scanner sees it (sslyze), against Mozilla's "intermediate" profile.

One sslyze scan of the session broker (127.0.0.1, SNI "localhost") runs per module, with the
admin client certificate from the broker's data dir so that every handshake can complete (the
scans for ROBOT, renegotiation, extended master secret and the like need a whole handshake); a
second, credential-less connectivity probe tells whether a client certificate is required.

Warren only: RabbitMQ's TLS settings are its operator's business, not something this suite
compares.
"""

from __future__ import annotations

import pytest

from conftest import TARGET

pytestmark = [
    pytest.mark.skipif(TARGET == "rabbitmq", reason="scans Warren's own TLS listener"),
    # sslyze's bundled trust stores hold old roots with non-positive serial numbers
    pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive"),
    pytest.mark.timeout(60),
]

NETWORK_TIMEOUT = 5


def _location(broker):
    from sslyze import ServerNetworkLocation

    # The name is only used for SNI and certificate checks: traffic goes to 127.0.0.1.
    return ServerNetworkLocation(hostname=broker.server_name, port=broker.port, ip_address=broker.host)


def _run(request):
    from sslyze import Scanner

    scanner = Scanner(per_server_concurrent_connections_limit=5)
    scanner.queue_scans([request])
    results = list(scanner.get_results())
    assert len(results) == 1
    return results[0]


@pytest.fixture(scope="module")
def probe_without_certificate(broker):
    """Connectivity only (no scan command), presenting no client certificate."""
    from sslyze import ServerConnectivityStatusEnum, ServerNetworkConfiguration, ServerScanRequest

    result = _run(ServerScanRequest(
        server_location=_location(broker),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=broker.server_name,
            network_timeout=NETWORK_TIMEOUT, network_max_retries=1),
        scan_commands=set()))
    assert result.connectivity_status == ServerConnectivityStatusEnum.COMPLETED, result.connectivity_error_trace
    return result


@pytest.fixture(scope="module")
def scan(broker):
    """Every scan command sslyze's Mozilla checker needs, with the admin client certificate."""
    from pathlib import Path

    from sslyze import (CertificateInfoExtraArgument, ClientAuthenticationCredentials,
                        ScanCommandsExtraArguments, ServerConnectivityStatusEnum,
                        ServerNetworkConfiguration, ServerScanRequest, ServerScanStatusEnum)
    from sslyze.mozilla_tls_profile.tls_config_checker import SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER

    creds = ClientAuthenticationCredentials(certificate_chain_path=Path(broker.cert_file),
                                            key_path=Path(broker.key_file))
    result = _run(ServerScanRequest(
        server_location=_location(broker),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=broker.server_name,
            tls_client_auth_credentials=creds,
            network_timeout=NETWORK_TIMEOUT, network_max_retries=1),
        scan_commands=set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER),
        # the broker's certificate chains to the operator's CA, not to a public root
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(broker.ca_file)))))
    assert result.connectivity_status == ServerConnectivityStatusEnum.COMPLETED, result.connectivity_error_trace
    assert result.scan_status == ServerScanStatusEnum.COMPLETED
    return result


def _versions(scan):
    from sslyze import ScanCommandAttemptStatusEnum

    out = {}
    for field, name in [("ssl_2_0_cipher_suites", "SSL 2.0"), ("ssl_3_0_cipher_suites", "SSL 3.0"),
                        ("tls_1_0_cipher_suites", "TLS 1.0"), ("tls_1_1_cipher_suites", "TLS 1.1"),
                        ("tls_1_2_cipher_suites", "TLS 1.2"), ("tls_1_3_cipher_suites", "TLS 1.3")]:
        attempt = getattr(scan.scan_result, field)
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (
            f"{field}: {attempt.error_reason} {attempt.error_trace}")
        out[name] = attempt.result
    return out


def test_client_certificate_is_required(probe_without_certificate):
    from sslyze import ClientAuthRequirementEnum

    probing = probe_without_certificate.connectivity_result
    assert probing.client_auth_requirement == ClientAuthRequirementEnum.REQUIRED


def test_legacy_protocol_versions_are_rejected(scan):
    versions = _versions(scan)
    accepted = {name: [c.cipher_suite.name for c in r.accepted_cipher_suites]
                for name, r in versions.items()
                if name in ("SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1") and r.is_tls_version_supported}
    assert accepted == {}


def test_tls_1_2_and_1_3_are_accepted(scan):
    versions = _versions(scan)
    for name in ("TLS 1.2", "TLS 1.3"):
        assert versions[name].is_tls_version_supported, f"{name} not accepted"
        assert versions[name].accepted_cipher_suites, f"no {name} cipher suite accepted"
    # the handshake completed with the client certificate: the highest version is 1.3
    from sslyze import TlsVersionEnum
    assert scan.connectivity_result.highest_tls_version_supported == TlsVersionEnum.TLS_1_3


def test_compliant_with_mozilla_intermediate(scan):
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        MozillaTlsConfiguration, ServerNotCompliantWithTlsConfiguration, TlsConfigurationEnum,
        check_server_against_tls_configuration)

    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    issues = {}
    try:
        check_server_against_tls_configuration(scan, profile)
    except ServerNotCompliantWithTlsConfiguration as e:
        issues = e.issues
    if issues:
        why = "\n".join(f"  {key}: {text}" for key, text in sorted(issues.items()))
        print(f"not compliant with Mozilla intermediate:\n{why}")
        pytest.fail(f"the broker's TLS listener is not compliant with Mozilla's intermediate profile:\n{why}",
                    pytrace=False)

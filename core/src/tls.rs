//! rustls under tonic, on both sides.
//!
//! tonic's own TLS options cannot express what Pangaea needs, so TLS is done here with
//! tokio-rustls and handed to tonic as a plain byte stream:
//!
//! * The agent, before it has joined, trusts the controller only if one certificate of the
//!   chain the controller presents has the pinned SPKI hash ([`PinnedCaVerifier`]); the
//!   server certificate must then chain to that CA as usual.
//! * The controller accepts clients without a certificate (only `Enrollment/Join` serves
//!   them) and clients with a certificate from the controller CA; the verified peer
//!   certificate reaches the handlers as a request extension ([`PeerInfo`]).

use crate::pin::SpkiPin;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::{Channel, Endpoint};

/// Verifies the controller against a CA that is identified only by its SPKI pin: the CA
/// certificate must be among the certificates the server sends, its key hash must equal the
/// pin, and the server certificate must chain to it and name the host dialled.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: SpkiPin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCaVerifier {
    /// Trusts a chain only through a certificate whose key has `pin`.
    pub fn new(pin: SpkiPin) -> Self {
        PinnedCaVerifier {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| SpkiPin::of_cert_der(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                tracing::error!(pin = %self.pin, "controller presented no CA certificate matching the pinned SPKI hash");
                rustls::Error::General(format!("controller CA does not match the pin {} from the agent config", self.pin))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA certificate unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Errors building a connection to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is not `HOST:PORT` or `https://HOST:PORT`.
    #[error("invalid controller endpoint {0:?}: expected HOST:PORT or https://HOST:PORT")]
    BadEndpoint(String),
}

/// Splits `https://host:port` or `host:port` into the host to verify and the address to dial.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, String), ConnectError> {
    let bad = || ConnectError::BadEndpoint(endpoint.to_owned());
    let rest = endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), rest.to_owned()))
}

/// A lazily connecting gRPC channel to the controller over TLS with `config`.
/// Reconnection after a broken connection is left to tonic's channel.
pub fn channel(endpoint: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, ConnectError> {
    let (host, addr) = parse_endpoint(endpoint)?;
    let server_name = ServerName::try_from(host)
        .map_err(|_| ConnectError::BadEndpoint(endpoint.to_owned()))?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(config);
    // The URI only carries the authority for HTTP/2; the real dial happens in the connector.
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ConnectError::BadEndpoint(endpoint.to_owned()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let (connector, server_name, addr) =
                (connector.clone(), server_name.clone(), addr.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// What a handler knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The client's address, when the socket knows it.
    pub remote_addr: Option<SocketAddr>,
    /// The client's verified certificate chain, leaf first; `None` without client auth.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server-side TLS connection that tells tonic who is on the other end. It holds one of
/// the listener's connection permits until it is dropped (the connection closes).
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bounds on what [`tls_incoming`] takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Connections open at once, from accept to close, handshakes included. Over it a new
    /// connection is accepted and closed at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once. A connection over it waits for a slot (its
    /// handshake timeout runs meanwhile), so that clients that never finish a handshake
    /// cannot hold more than this many.
    pub max_handshakes: usize,
    /// How long a client may take to complete its handshake, waiting for a slot included.
    pub handshake_timeout: Duration,
}

/// How long a refused-connection warning is held back after the last one, so that a flood
/// over the connection cap does not flood the log too.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts TCP connections on `listener` and completes TLS handshakes concurrently (a slow
/// or hostile client cannot stall the others), within `limits`. Failed handshakes are
/// logged and dropped; the returned stream yields only established connections, ready for
/// `Server::serve_with_incoming`.
///
/// Over [`AcceptLimits::max_connections`] a connection is accepted and closed at once
/// rather than left in the kernel's accept queue: the client learns at once that it must
/// come back later (agents retry with jittered backoff), no file descriptor is held for
/// it, and the queue never fills with connections that nobody will serve before their
/// clients give up, behind which newcomers would wait too.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: AcceptLimits,
) -> impl tokio_stream::Stream<Item = Result<PeerStream, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let (tx, rx) = mpsc::channel::<Result<PeerStream, std::io::Error>>(128);
    tokio::spawn(async move {
        let mut refused = 0u64;
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            // Stop listening (and free the port) as soon as the server drops the stream.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: pause instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                drop(tcp);
                refused += 1;
                if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    tracing::warn!(
                        %remote,
                        refused,
                        max = limits.max_connections,
                        "connection cap reached: closing new connections"
                    );
                    last_refusal_log = Some(Instant::now());
                    refused = 0;
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handshakes, conn_tx) =
                (acceptor.clone(), handshakes.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(limits.handshake_timeout, async {
                    let _slot = handshakes
                        .acquire_owned()
                        .await
                        .expect("the handshake semaphore is never closed");
                    acceptor.accept(tcp).await
                })
                .await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let certs =
                            tls.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())
                            });
                        let info = PeerInfo {
                            remote_addr: Some(remote),
                            certs,
                        };
                        let stream = PeerStream {
                            inner: tls,
                            info,
                            _permit: permit,
                        };
                        let _ = conn_tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    /// A server on 127.0.0.1 with a self-signed certificate, and a client config trusting it.
    async fn server(
        limits: AcceptLimits,
    ) -> (
        SocketAddr,
        impl tokio_stream::Stream<Item = Result<PeerStream, std::io::Error>>,
        tokio_rustls::TlsConnector,
    ) {
        crate::install_crypto_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            addr,
            tls_incoming(listener, Arc::new(server), limits),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    async fn handshake(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Hardening #6 (connection cap): over the cap a connection is closed at once, and
    /// the permit of a connection that closes serves the next one.
    #[tokio::test]
    async fn over_the_connection_cap_a_new_connection_is_closed_at_once() {
        let limits = AcceptLimits {
            max_connections: 3,
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(30),
        };
        let (addr, incoming, connector) = server(limits).await;
        tokio::pin!(incoming);
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            clients.push(handshake(addr, &connector).await.unwrap());
            served.push(incoming.next().await.unwrap().unwrap());
        }
        // The fourth: accepted and closed without a handshake.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("the server closes a connection over the cap at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed, not served");
        // One served connection closes: its permit serves the next client.
        drop(served.pop());
        let next = tokio::time::timeout(Duration::from_secs(5), handshake(addr, &connector))
            .await
            .expect("a handshake within 5 s once a connection closed");
        next.expect("served under the cap again");
        assert!(incoming.next().await.unwrap().is_ok());
    }

    /// Hardening #6 (handshake cap): clients that never send a TLS hello hold at most
    /// `max_handshakes` slots; a real client waits for a slot, not for their timeout, and
    /// completes as soon as one of them goes away. (A current-thread runtime, so that the
    /// idle connections take their slots in the order they were accepted.)
    #[tokio::test]
    async fn idle_clients_hold_at_most_the_handshake_slots() {
        let limits = AcceptLimits {
            max_connections: 16,
            max_handshakes: 2,
            handshake_timeout: Duration::from_secs(60),
        };
        let (addr, incoming, connector) = server(limits).await;
        tokio::pin!(incoming);
        let first_idle = TcpStream::connect(addr).await.unwrap();
        let _second_idle = TcpStream::connect(addr).await.unwrap();
        let real = handshake(addr, &connector);
        tokio::pin!(real);
        let early = tokio::time::timeout(Duration::from_millis(500), &mut real).await;
        assert!(
            early.is_err(),
            "the handshake completed although both slots were held"
        );
        drop(first_idle);
        tokio::time::timeout(Duration::from_secs(5), real)
            .await
            .expect("the handshake completes once a slot is free")
            .expect("handshake succeeds");
        assert!(incoming.next().await.unwrap().is_ok());
    }
}

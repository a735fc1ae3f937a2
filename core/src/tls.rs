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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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

/// A server-side TLS connection that tells tonic who is on the other end.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
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

/// Accepts TCP connections on `listener` and completes TLS handshakes concurrently (a slow
/// or hostile client cannot stall the others). Failed handshakes are logged and dropped;
/// the returned stream yields only established connections, ready for
/// `Server::serve_with_incoming`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl tokio_stream::Stream<Item = Result<PeerStream, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel::<Result<PeerStream, std::io::Error>>(128);
    tokio::spawn(async move {
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
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
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
                        let _ = conn_tx.send(Ok(PeerStream { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

//! IPv4 CIDR blocks: parsing, overlap checks and "the nth address" (service IP, DNS IP,
//! node addresses).

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network, `network/prefix`; displays (and deserializes) as `10.96.0.0/12`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (no host bits set).
    pub network: Ipv4Addr,
    /// The prefix length, 0-32.
    pub prefix: u8,
}

/// Why a string is not a CIDR block, or an address is not in one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not `a.b.c.d/n` with n at most 32.
    #[error("invalid CIDR {0:?}: expected an IPv4 network like 10.96.0.0/12")]
    Malformed(String),
    /// An address inside the network rather than the network itself.
    #[error("invalid CIDR {given:?}: host bits are set; did you mean {suggest}?")]
    HostBits {
        /// The string as given.
        given: String,
        /// The network it probably means.
        suggest: String,
    },
    /// [`Cidr::nth`] past the end of the block.
    #[error("address #{n} is outside {cidr} ({size} addresses)")]
    OutOfRange {
        /// The address number asked for.
        n: u64,
        /// The block.
        cidr: String,
        /// How many addresses the block has.
        size: u64,
    },
}

impl Cidr {
    /// Parses `a.b.c.d/n`, refusing host bits (a common slip that would silently move the
    /// network).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError::Malformed(s.to_owned());
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let network = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        if network != ip {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                suggest: format!("{network}/{prefix}"),
            });
        }
        Ok(Cidr { network, prefix })
    }

    /// Number of addresses in the block, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two blocks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The netmask of the block (255.255.255.0 for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The `n`th address of the block (0 is the network address itself).
    pub fn nth(&self, n: u64) -> Result<Ipv4Addr, CidrError> {
        if n >= self.size() {
            return Err(CidrError::OutOfRange {
                n,
                cidr: self.to_string(),
                size: self.size(),
            });
        }
        Ok(Ipv4Addr::from(u32::from(self.network) + n as u32))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        Cidr::parse(s)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.nth(1).unwrap().to_string(), "10.96.0.1");
        assert_eq!(c.nth(10).unwrap().to_string(), "10.96.0.10");
        assert!(c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.112.0.0".parse().unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.100.0.0/16").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.244.0.0/16").unwrap()));
        assert!(matches!(
            Cidr::parse("10.0.0.0/30").unwrap().nth(4),
            Err(CidrError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rejects_bad_blocks() {
        assert!(matches!(
            Cidr::parse("10.96.0.1/12"),
            Err(CidrError::HostBits { .. })
        ));
        for bad in ["10.96.0.0", "10.96.0.0/33", "300.1.1.1/8", "fd00::/8", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}

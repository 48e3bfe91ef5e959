//! `[listen]` (address, TLS, client certificates, trusted proxies) and the other
//! listeners' sections: `[admin]`, `[egress]`, `[forward_auth]`.

use super::*;

/// The addresses of the listeners that a section turns on, and the forward-auth ingress.
pub(super) struct Listeners {
    pub admin: Option<SocketAddr>,
    pub egress: Option<SocketAddr>,
    pub forward_auth: Option<SocketAddr>,
    pub forward_auth_ingress: Ingress,
}

/// A listener on when its section is present, at `address` or on loopback at `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
impl Validator<'_> {
    pub(super) fn listen_section(&mut self, l: Option<&Spanned<raw::Listen>>) -> Listen {
        match l {
            Some(l) => self.listen(l),
            None => {
                self.error(None, "missing [listen] section with `address`");
                Listen {
                    address: loopback(0),
                    tls: None,
                    tls_key: None,
                    client_verifier: None,
                    trusted_proxies: Vec::new(),
                }
            }
        }
    }

    /// A listener's address: none without its section, the default without `address`.
    fn listener(&mut self, section: Option<Option<&Str>>, default_port: u16) -> Option<SocketAddr> {
        match section? {
            Some(addr) => self.address(addr),
            None => Some(loopback(default_port)),
        }
    }

    pub(super) fn listeners(&mut self, raw: &raw::Raw) -> Listeners {
        let admin = self.listener(raw.admin.as_ref().map(|a| a.get_ref().address.as_ref()), 9901);
        let egress = self.listener(raw.egress.as_ref().map(|a| a.get_ref().address.as_ref()), 9902);
        let forward_auth = self.listener(raw.forward_auth.as_ref().map(|a| a.get_ref().address.as_ref()), 9903);
        let forward_auth_ingress = self.ingress(raw.forward_auth.as_ref());
        if forward_auth.is_some()
            && raw
                .listen
                .as_ref()
                .is_none_or(|l| l.get_ref().trusted_proxies.is_empty())
        {
            self.warn(
                raw.forward_auth.as_ref().map(|a| a.span()),
                "[forward_auth] answers only peers in [listen] trusted_proxies, and there are none: every subrequest gets 403",
            );
        }
        Listeners {
            admin,
            egress,
            forward_auth,
            forward_auth_ingress,
        }
    }

    fn ingress(&mut self, fa: Option<&Spanned<raw::ForwardAuth>>) -> Ingress {
        match fa.and_then(|a| a.get_ref().ingress.as_ref()) {
            None => {
                if let Some(fa) = fa {
                    self.warn(
                        Some(fa.span()),
                        "[forward_auth] has no `ingress`: \"detect\" believes X-Original-* or X-Forwarded-* whenever the subrequest's own target is no route; behind Envoy, or an ingress that passes client headers on, name it (\"nginx\", \"traefik\", \"envoy\")",
                    );
                }
                Ingress::Detect
            }
            Some(i) => match i.get_ref().as_str() {
                "detect" => Ingress::Detect,
                "nginx" => Ingress::Nginx,
                "traefik" => Ingress::Traefik,
                "envoy" => Ingress::Envoy,
                other => {
                    self.error(
                        sp(i),
                        format!(
                            "forward_auth.ingress `{other}`: expected \"nginx\", \"traefik\", \"envoy\" or \"detect\""
                        ),
                    );
                    Ingress::Detect
                }
            },
        }
    }

    fn listen(&mut self, l: &Spanned<raw::Listen>) -> Listen {
        let r = l.get_ref();
        let address = self.address(&r.address).unwrap_or_else(|| loopback(0));
        let tls = r.tls.as_ref().and_then(|t| {
            let t = t.get_ref();
            let client_auth_required = match t.client_auth.as_ref().map(|a| (a, a.get_ref().as_str())) {
                None | Some((_, "optional")) => false,
                Some((_, "required")) => true,
                Some((a, other)) => {
                    self.error(
                        sp(a),
                        format!("listen.tls.client_auth `{other}`: expected \"optional\" or \"required\""),
                    );
                    false
                }
            };
            if t.client_ca.is_none() && (t.client_auth.is_some() || t.client_crl.is_some()) {
                self.error(sp(&t.cert), "listen.tls: client_auth and client_crl need client_ca");
            }
            let files = TlsFiles {
                cert: PathBuf::from(t.cert.get_ref()),
                key: PathBuf::from(t.key.get_ref()),
                client_ca: t.client_ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
                client_auth_required,
                client_crl: t.client_crl.as_ref().map(|c| PathBuf::from(c.get_ref())),
            };
            match keys::load_certified_key(&files) {
                Ok(key) => Some((files, key)),
                Err(keys::LoadError::Cert(m)) => {
                    self.error(sp(&t.cert), m);
                    None
                }
                Err(keys::LoadError::Key(m)) => {
                    self.error(sp(&t.key), m);
                    None
                }
            }
        });
        let (tls, tls_key) = match tls {
            Some((files, key)) => (Some(files), Some(key)),
            None => (None, None),
        };
        let client_verifier = tls.as_ref().and_then(|f| {
            let ca = f.client_ca.as_ref()?;
            self.watched.push((ca.clone(), super::FileKind::Tls));
            self.watched
                .extend(f.client_crl.iter().map(|c| (c.clone(), super::FileKind::Crl)));
            match keys::client_verifier(ca, f.client_crl.as_deref(), f.client_auth_required) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(r.tls.as_ref().and_then(|t| sp(&t.get_ref().cert)), e.to_string());
                    None
                }
            }
        });
        let mut trusted_proxies = Vec::new();
        for t in &r.trusted_proxies {
            let text = t.get_ref();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.error(
                    sp(t),
                    format!("listen.trusted_proxies: `{text}` is not an address or CIDR such as 10.0.0.0/8"),
                ),
            }
        }
        Listen {
            address,
            tls,
            tls_key,
            client_verifier,
            trusted_proxies,
        }
    }
}

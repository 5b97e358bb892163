//! A small rtnetlink toolbox bound to one namespace: the namespace of the
//! thread that opened the [`Netlink`] socket (a netlink socket keeps the
//! namespace it was created in, whatever thread polls it later). This half
//! handles links and namespace ids; `addrs` handles addresses, routes and
//! neighbours.

use std::os::fd::{AsRawFd, BorrowedFd};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::error::{Error, Result, errno};

const ENODEV: i32 = libc::ENODEV;

/// A netlink connection in the namespace it was opened in.
pub(crate) struct Netlink {
    pub handle: Handle,
    /// For messages: "in the node namespace", "in netns i1".
    pub place: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What we need to know about one interface.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    pub veth: bool,
    pub alias: Option<String>,
    /// IFLA_LINK: a veth's peer ifindex (in the peer's namespace).
    pub peer: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace if it is not this one.
    pub peer_nsid: Option<i32>,
}

impl Link {
    fn parse(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            veth: false,
            alias: None,
            peer: None,
            peer_nsid: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::Link(p) => link.peer = Some(p),
                LinkAttribute::LinkNetNsId(id) => link.peer_nsid = Some(id),
                LinkAttribute::LinkInfo(infos) => {
                    link.veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }
}

pub(super) fn nl_err(op: &'static str, target: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |source| Error::Netlink { op, target, source }
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace; the connection
    /// task runs on the current tokio runtime.
    pub fn open(place: impl Into<String>) -> Result<Netlink> {
        let place = place.into();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Sys {
            op: "opening a netlink socket",
            target: place.clone(),
            source,
        })?;
        let task = tokio::spawn(conn);
        Ok(Netlink {
            handle,
            place,
            task,
        })
    }

    pub(super) fn at(&self, what: &str) -> String {
        format!("{what} {}", self.place)
    }

    /// The interface called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_name(name).execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg.map(Link::parse)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_err("looking up", self.at(name))(e)),
        }
    }

    /// Like [`Netlink::link_by_name`], but its absence is an error.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::Missing {
                ifname: name.to_owned(),
                place: self.place.clone(),
            })
    }

    /// Creates the veth pair `name` <-> `peer`, both down, both with `mtu`.
    pub async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu).build();
        let msg = LinkMessageBuilder::<LinkVeth>::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .mtu(mtu)
            .build();
        let target = self.at(&format!("{name} (peer {peer})"));
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err("creating veth", target))
    }

    /// Sets the interface alias (the kernel ignores one given at creation).
    pub async fn set_alias(&self, link: &Link, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index).alias(alias).build();
        let target = self.at(&link.name);
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err("setting the alias of", target))
    }

    /// Moves `link` into the namespace of `fd` (it arrives there down).
    pub async fn move_link(&self, link: &Link, fd: BorrowedFd<'_>, to: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(fd.as_raw_fd())
            .build();
        let target = format!("{} {} to {to}", link.name, self.place);
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err("moving", target))
    }

    /// Renames a (down) interface.
    pub async fn rename(&self, link: &Link, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index).name(name).build();
        let target = self.at(&format!("{} to {name}", link.name));
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err("renaming", target))
    }

    /// Sets the MTU and brings the interface up, each only if needed.
    pub async fn ensure_up(&self, link: &Link, mtu: Option<u32>) -> Result<()> {
        if let Some(mtu) = mtu.filter(|&m| m != link.mtu) {
            let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
            let target = self.at(&format!("{} to {mtu}", link.name));
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl_err("setting MTU of", target))?;
        }
        if !link.up {
            let msg = LinkUnspec::new_with_index(link.index).up().build();
            let target = self.at(&link.name);
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl_err("bringing up", target))?;
        }
        Ok(())
    }

    /// Deletes an interface (a veth takes its peer along); a missing one is fine.
    pub async fn delete_link(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Err(e) if errno(&e) != Some(ENODEV) => Err(nl_err("deleting", self.at(&link.name))(e)),
            _ => Ok(()),
        }
    }

    /// The id under which this namespace knows the namespace of `fd`, if it
    /// has assigned one (it does once it has reported a link peer there).
    pub async fn nsid_of(&self, fd: BorrowedFd<'_>, label: &str) -> Result<Option<i32>> {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(fd.as_raw_fd() as u32)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let target = format!("of {label} {}", self.place);
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(nl_err("getting the nsid", target.clone()))?;
        let mut id = None;
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    let e = rtnetlink::Error::NetlinkError(e);
                    return Err(nl_err("getting the nsid", target)(e));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(id)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

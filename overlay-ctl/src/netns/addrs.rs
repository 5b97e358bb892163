//! Addresses, routes and neighbours: the `ensure_*` half of [`Netlink`].
//! Each helper reads first and writes only what differs.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};

use super::error::{Result, errno};
use super::nl::{Link, Netlink, fmt_mac, nl_err};

const ESRCH: i32 = libc::ESRCH;
const ENOENT: i32 = libc::ENOENT;
const ENODEV: i32 = libc::ENODEV;
/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// An IPv4 route of the main table, as far as we look at routes.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub dst: Ipv4Addr,
    pub len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    pub msg: RouteMessage,
}

impl Route {
    fn parse(msg: RouteMessage) -> Option<Route> {
        let mut table = u32::from(msg.header.table);
        let mut r = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: msg.header.scope,
            msg: msg.clone(),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => r.dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => r.gateway = Some(*a),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        (table == MAIN_TABLE).then_some(r)
    }
}

impl Netlink {
    /// The IPv4 addresses (with prefix length) on interface `index`.
    pub async fn ipv4_addrs(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut out = Vec::new();
        let target = self.at(&link.name);
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(nl_err("listing addresses of", target.clone()))?
        {
            let len = msg.header.prefix_len;
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            out.extend(addr.map(|a| (a, len)));
        }
        Ok(out)
    }

    /// Adds `ip/len` on the interface unless it is there already.
    pub async fn ensure_addr(&self, link: &Link, ip: Ipv4Addr, len: u8) -> Result<()> {
        if self.ipv4_addrs(link).await?.contains(&(ip, len)) {
            return Ok(());
        }
        let target = self.at(&format!("{ip}/{len} on {}", link.name));
        let req = self.handle.address().add(link.index, IpAddr::V4(ip), len);
        req.execute()
            .await
            .map_err(nl_err("adding address", target))
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle.route().get(query).execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(nl_err("listing routes", self.place.clone()))?
        {
            out.extend(Route::parse(msg));
        }
        Ok(out)
    }

    /// Makes sure the main table routes `dst/len` over `link`, through
    /// `gateway` or (without one) with link scope; replaces a route for the
    /// same prefix that goes elsewhere.
    pub async fn ensure_route(
        &self,
        link: &Link,
        dst: Ipv4Addr,
        len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<()> {
        let scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let present = self.routes().await?.iter().any(|r| {
            r.dst == dst
                && r.len == len
                && r.gateway == gateway
                && r.oif == Some(link.index)
                && r.scope == scope
        });
        if present {
            return Ok(());
        }
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(link.index)
            .scope(scope);
        if len > 0 {
            b = b.destination_prefix(dst, len);
        }
        if let Some(gw) = gateway {
            b = b.gateway(gw);
        }
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let target = self.at(&format!("{dst}/{len}{via} dev {}", link.name));
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl_err("adding route", target))
    }

    /// Deletes every main-table IPv4 route through `link`.
    pub async fn delete_routes_via(&self, link: &Link) -> Result<()> {
        for r in self
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
        {
            let target = self.at(&format!("{}/{} dev {}", r.dst, r.len, link.name));
            match self.handle.route().del(r.msg).execute().await {
                Err(e) if !matches!(errno(&e), Some(ESRCH | ENOENT | ENODEV)) => {
                    return Err(nl_err("deleting route", target)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes sure `ip` on `link` is a permanent neighbour at `mac`.
    pub async fn ensure_neigh(&self, link: &Link, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let target = self.at(&format!("{ip} lladdr {} dev {}", fmt_mac(&mac), link.name));
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let want_dst = NeighbourAttribute::Destination(NeighbourAddress::Inet(ip));
        let want_lla = NeighbourAttribute::LinkLayerAddress(mac.to_vec());
        while let Some(n) = dump
            .try_next()
            .await
            .map_err(nl_err("listing neighbours for", target.clone()))?
        {
            let dst = n.attributes.contains(&want_dst);
            let lla = n.attributes.contains(&want_lla);
            if n.header.ifindex == link.index
                && dst
                && lla
                && n.header.state == NeighbourState::Permanent
            {
                return Ok(());
            }
        }
        let req = self.handle.neighbours().add(link.index, IpAddr::V4(ip));
        let req = req
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace();
        req.execute()
            .await
            .map_err(nl_err("adding neighbour", target))
    }
}

//! `pangaea-ctl env TOOL`: shell exports, e.g. `eval "$(pangaea-ctl env etcdctl)"`.

use super::Ctx;

/// `ETCDCTL_*` for the cluster's etcd, with the operator's client certificate.
pub fn etcdctl(ctx: &Ctx) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    for (k, v) in crate::etcd::operator_env(&c)? {
        crate::outln!("export {k}={v}");
    }
    Ok(())
}

//! A tenant client's login: its startup packet routed to a tenant (configured, or dynamic
//! through `auth_query`), the client's proof checked against the tenant's secret, and the
//! tenant's client limit. An unknown role of a dynamic database gets the same exchange as a
//! wrong password, so a client cannot tell whether a role exists.

use crate::client::{negotiate_version, prove, SessionError};
use crate::net::Stream;
use crate::server::ServerCredentials;
use crate::tenant::{ClientAuth, ClientSlot, ResolveError, Resolved, Tenant, Tenants, Unknown};
use bytes::BytesMut;
use sluice_protocol::startup::StartupMessage;
use std::sync::Arc;

/// A client that proved it is a tenant's role and fits under the tenant's client limit.
pub struct LoggedIn {
    pub tenant: Arc<Tenant>,
    pub slot: ClientSlot,
}

/// Routes the startup packet to a tenant and authenticates the client. On success the
/// client has received everything up to (not including) AuthenticationOk.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    tenants: &Tenants,
) -> Result<LoggedIn, SessionError> {
    let mut out = BytesMut::with_capacity(256);
    negotiate_version(startup, &mut out);
    let user = startup.user();
    let database = startup.database();
    let tenant = match tenants.resolve(database, user).await {
        Ok(Resolved::Tenant(tenant)) => tenant,
        Ok(Resolved::UnknownRole(auth_type)) => {
            // The same exchange as for a wrong password, so the client cannot tell.
            prove(stream, buf, &mut out, &ClientAuth::decoy(auth_type), user).await?;
            return Err(SessionError::BadPassword(user.to_owned()));
        }
        Err(ResolveError::Unknown(Unknown::Database)) => {
            return Err(SessionError::UnknownDatabase(database.to_owned()))
        }
        Err(ResolveError::Unknown(Unknown::User)) => {
            return Err(SessionError::UnknownUser {
                database: database.to_owned(),
                user: user.to_owned(),
            })
        }
        Err(ResolveError::Lookup(source)) => {
            return Err(SessionError::AuthQuery {
                user: user.to_owned(),
                source,
            })
        }
    };
    let proof = prove(stream, buf, &mut out, &tenant.auth, user).await?;
    let proven = match (proof, &tenant.auth) {
        (Some(keys), _) => Some(ServerCredentials::ScramKeys(keys)),
        (None, ClientAuth::Md5 { hash }) => Some(ServerCredentials::Md5Hash(hash.clone())),
        (None, ClientAuth::Scram(_)) => None,
    };
    if let Some(credentials) = proven {
        tenant.learn_server_credentials(credentials);
    }
    let slot = tenant
        .admit_client()
        .ok_or_else(|| SessionError::TooManyClients {
            tenant: tenant.name(),
            max: tenant.settings.max_client_connections,
        })?;
    Ok(LoggedIn { tenant, slot })
}

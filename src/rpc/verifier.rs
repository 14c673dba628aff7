//! The `endpoint-verifier` endpoint: answers whether an endpoint of a given name exists,
//! so that `setup_endpoint_ref*` fails promptly with `EndpointNotFound` instead of
//! handing out a reference that cannot work.

use serde::{Deserialize, Serialize};

use crate::rpc::call::RpcCallContext;
use crate::rpc::endpoint::{EndpointContext, RpcEndpoint};
use crate::rpc::env::EnvInner;
use crate::sync::Weak;

/// The verifier's name in every server env.
pub(crate) const NAME: &str = "endpoint-verifier";

/// The verifier's one question.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CheckExistence(pub(crate) String);

/// Answers [`CheckExistence`] with a `bool`.
pub(crate) struct Verifier {
    pub(crate) env: Weak<EnvInner>,
}

impl RpcEndpoint for Verifier {
    type Message = CheckExistence;

    fn receive_and_reply(
        &mut self,
        CheckExistence(name): CheckExistence,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let exists = self
            .env
            .upgrade()
            .is_some_and(|env| env.dispatcher().verify(&name));
        reply.reply(exists);
    }
}

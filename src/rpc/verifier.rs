//! The `endpoint-verifier` endpoint: answers whether an endpoint of a given name exists
//! and takes the message type a lookup asks for, so that `setup_endpoint_ref*` fails
//! promptly with `EndpointNotFound` or `MessageType` instead of handing out a reference
//! that cannot work.

use serde::{Deserialize, Serialize};

use crate::rpc::call::RpcCallContext;
use crate::rpc::endpoint::{EndpointContext, RpcEndpoint};
use crate::rpc::env::EnvInner;
use crate::rpc::types;
use crate::sync::Weak;

/// The verifier's name in every server env.
pub(crate) const NAME: &str = "endpoint-verifier";

/// The verifier's one question: is there an endpoint `name` taking messages of the type
/// called `message_type` (its `std::any::type_name`)?
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CheckExistence {
    pub(crate) name: String,
    pub(crate) message_type: String,
}

/// The verifier's answer.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Verdict {
    Exists,
    Missing,
    /// It exists and takes messages of this type (a wire name).
    OtherType {
        takes: String,
    },
}

/// Answers [`CheckExistence`] with a [`Verdict`].
pub(crate) struct Verifier {
    pub(crate) env: Weak<EnvInner>,
}

impl RpcEndpoint for Verifier {
    type Message = CheckExistence;

    fn receive_and_reply(
        &mut self,
        CheckExistence { name, message_type }: CheckExistence,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let fingerprint = types::fingerprint_of(&message_type);
        let verdict = match self.env.upgrade() {
            Some(env) => env.dispatcher().verify(&name, fingerprint),
            None => Verdict::Missing,
        };
        reply.reply(verdict);
    }
}

//! One operation per fresh channel ([`RawClient::attempt`]): the broker's answer, or the channel.close
//! it caused, so a test can walk through many refusals on one connection.

use amq_protocol::protocol::{basic, channel, AMQPClass};

use super::{confirm_select, RawClient};
use crate::CloseInfo;

impl RawClient {
    /// Sends `method` on a fresh channel and returns the broker's answer, or the channel.close it
    /// caused (answered with close-ok). The content of a basic.get-ok is read and dropped.
    pub async fn attempt(&mut self, method: AMQPClass) -> Result<AMQPClass, CloseInfo> {
        let id = self.fresh_channel().await;
        self.send_method(id, method).await;
        self.answer(id).await
    }

    /// basic.publish on a fresh channel in confirm mode: Ok once the broker confirms it, or the
    /// channel.close it caused.
    pub async fn attempt_publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) -> Result<(), CloseInfo> {
        let id = self.fresh_channel().await;
        match self.call(id, confirm_select()).await {
            AMQPClass::Confirm(_) => {}
            other => panic!("expected confirm.select-ok, got {other:?}"),
        }
        self.publish(id, exchange, routing_key, false, properties, body)
            .await;
        match self.answer(id).await? {
            AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => Ok(()),
            other => panic!("expected basic.ack for the publish, got {other:?}"),
        }
    }

    async fn fresh_channel(&mut self) -> u16 {
        let id = self.next_attempt_channel;
        self.next_attempt_channel += 1;
        self.open_channel(id).await;
        id
    }

    async fn answer(&mut self, id: u16) -> Result<AMQPClass, CloseInfo> {
        match self.expect_method(id).await {
            close @ AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                Err(self.answer_close(id, &close).await)
            }
            get_ok @ AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {
                Ok(self.expect_content(id, get_ok).await.method)
            }
            other => Ok(other),
        }
    }
}

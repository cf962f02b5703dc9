use ha_core::Replicated;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Inventory {
    items: u64,
}

impl Inventory {
    pub fn add(&mut self, n: u64) -> u64 {
        self.items += n;
        self.items
    }
}

#[tokio::main]
async fn main() {
    let cluster = ha_quic::LocalCluster::<Inventory>::start(3).await.unwrap();
    let _client = cluster.client();
}

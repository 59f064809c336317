use densenet::densenet;

densenet! {
    pub Net<growth: 32, blocks: [6, 12, 24, 16], dropout: 1.0>
}

fn main() {}

use densenet::densenet;

densenet! {
    pub Net<growth: 32, blocks: []>
}

fn main() {}

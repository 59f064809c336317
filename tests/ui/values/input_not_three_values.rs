use densenet::densenet;

densenet! {
    pub Net<growth: 32, blocks: [6, 12, 24, 16], input: [224, 224]>
}

fn main() {}

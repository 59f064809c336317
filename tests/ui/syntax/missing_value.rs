use densenet::densenet;

densenet! {
    pub Net<growth: , blocks: [6, 12, 24, 16]>
}

fn main() {}

// One spec with six mistakes: each is reported, at its own token.
use densenet::densenet;

densenet! {
    pub Net<growht: 32, growth: 0, blocks: [6, 0, 24, 16], theta: 1.5, dropout: -0.1, stem: cifr>
}

fn main() {}
